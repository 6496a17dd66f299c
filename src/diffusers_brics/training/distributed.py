"""Data-parallel processes that agree: per-process, per-micro-batch seeds (`micro_batch_seed`), gradients averaged
(`average_gradients`) and weights broadcast (`broadcast_parameters`) for modules kept out of DDP, and weights checked
identical across processes (`weights_digest`, `check_in_sync`)."""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast, gather_object

from .accelerator_setup import plain_module

logger = get_logger(__name__)


def micro_batch_seed(seed: int, accumulation_steps: int, step: int, micro_step: int, process_index: int) -> int:
    """The seed of one micro-batch's random draws (flips, noise, timesteps): a function of the run's ``seed``, the
    optimisation step, the micro-batch within it (``0 .. accumulation_steps - 1``) and the process, so a resumed
    run draws what the uninterrupted one would, and no two micro-batches share their draws."""
    micro_batch = step * accumulation_steps + micro_step
    return seed * 1_000_003 + micro_batch * 1009 + process_index


def average_gradients(accelerator: Accelerator, parameters) -> None:
    """Mean of the gradients over all processes (one all-reduce of the flattened gradients), for modules kept out
    of DDP."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters (as float32), in registration order."""
    digest = hashlib.sha256()
    for parameter in module.parameters():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(accelerator, model) -> None:
    """Fail loudly if the processes' weights diverged (they must be identical after data-parallel training)."""
    digests = gather_object([weights_digest(plain_module(accelerator, model))])
    if len(set(digests)) != 1:
        raise RuntimeError(f"weights differ across processes: {digests}")
    logger.info(f"weights identical on {len(digests)} process(es): sha256 {digests[0][:16]}")


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every process rank 0's weights of a module kept out of DDP."""
    for parameter in module.parameters():
        parameter.data.copy_(broadcast(parameter.data, from_process=0))
