"""What a run reports as it trains: the step progress bar (`step_progress`), each step's logged values averaged over
its micro-batches and processes (`StepLogs`), and images sent to the trackers (`log_image`)."""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .config import LoopConfig


def log_image(accelerator: Accelerator, tag: str, image, step: int) -> None:
    """Send a PIL image to the active trackers (TensorBoard, Weights & Biases)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image)}, step=step)


def step_progress(accelerator: Accelerator, config: LoopConfig, max_steps: int, initial: int) -> tqdm:
    """The training progress bar (main process). Under a time budget either limit may end the run first, so the bar
    names both (``steps of 12000, budget 1980 s``) and counts steps and their rate, without an ETA that could only
    be right for one of them."""
    budget = config.max_train_seconds
    return tqdm(total=None if budget else max_steps, initial=initial, desc=f"steps of {max_steps}, budget {budget:g} s"
                if budget else "steps", disable=not accelerator.is_local_main_process)


class StepLogs:
    """The logged losses of one optimisation step, averaged over its micro-batches and over the processes.

    Without it a step would log the last micro-batch of the main process only: with gradient accumulation
    or several processes that is a fraction of the effective batch, and a noisier curve.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, logs: dict[str, float]) -> None:
        """Record one micro-batch's values."""
        for key, value in logs.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        """Each value's mean over the step's micro-batches and the processes (call on every process: the
        processes log the same keys, as they run the same step), then start afresh for the next step."""
        keys = sorted(self._sums)
        means = torch.tensor([self._sums[k] / self._counts[k] for k in keys], device=accelerator.device)
        if accelerator.num_processes > 1:
            means = accelerator.reduce(means, reduction="mean")
        self._sums, self._counts = {}, {}
        return dict(zip(keys, means.tolist()))
