"""Keeping data-parallel processes in step."""

from __future__ import annotations

import hashlib
import time

import torch
from accelerate.logging import get_logger
from accelerate.utils import broadcast, gather_object

logger = get_logger(__name__)


def time_is_up(accelerator, start_time: float, budget: float) -> bool:
    """Whether the time budget is spent, decided by the main process so that all processes stop together."""
    flag = torch.tensor([float(time.monotonic() - start_time >= budget)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


def check_in_sync(accelerator, model) -> None:
    """Fail loudly if the processes' weights diverged (they must be identical after data-parallel training)."""
    digest = hashlib.sha256()
    for parameter in accelerator.unwrap_model(model).parameters():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    digests = gather_object([digest.hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"weights differ across processes: {digests}")
    logger.info(f"weights identical on {len(digests)} process(es): sha256 {digests[0][:16]}")
