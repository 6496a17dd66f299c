"""Resuming a run: `resume` loads ``resume_from_checkpoint`` (naming a damaged file when it cannot) and says where
the run goes on, and with how much training time behind it; `follow_schedule` gives the optimizer the restored
schedule's learning rates."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.logging import get_logger

from .checkpointing import checkpoint_train_seconds, first_unreadable_file, resolve_checkpoint
from .config import LoopConfig

logger = get_logger(__name__)


def resume(
    accelerator: Accelerator, config: LoopConfig, steps_per_epoch: int, lr_scheduler
) -> tuple[int, int, int, float]:
    """Load ``resume_from_checkpoint``; returns ``(global_step, first_epoch, batches_to_skip, train_seconds)``, the
    last the training time the checkpoint records (0 for a new run or a checkpoint that records none)."""
    if not config.resume_from_checkpoint:
        return 0, 0, 0, 0.0
    found = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if found is None:
        logger.info("no checkpoint to resume from; starting a new run")
        return 0, 0, 0, 0.0
    step, path = found
    try:
        accelerator.load_state(path)
    except Exception as error:  # a truncated file, or a checkpoint of another model or other flags
        damaged = first_unreadable_file(path)
        if damaged is not None:
            file, reason = damaged
            raise ValueError(
                f"--resume_from_checkpoint: {file} is damaged ({type(reason).__name__}: {reason}); resume from an "
                "earlier checkpoint (--resume_from_checkpoint checkpoint-<step>), or delete this one"
            ) from error
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be loaded ({type(error).__name__}: {error}). A checkpoint holds "
            "the model, its optimizer and scheduler, and the objects the run's flags add (the EMA with --use_ema, the "
            "discriminator with --gan_weight > 0): resume with the model and flags of the run that wrote it, or "
            "resume from an earlier checkpoint"
        ) from error
    follow_schedule(lr_scheduler)
    train_seconds = checkpoint_train_seconds(path)
    if train_seconds is None:
        logger.info(f"{path} does not record its training time: the run's train_seconds count from this resume")
    logger.info(f"resumed from {path} at step {step}")
    skip = (step % steps_per_epoch) * config.gradient_accumulation_steps
    return step, step // steps_per_epoch, skip, train_seconds or 0.0


def follow_schedule(lr_scheduler) -> None:
    """Set the optimizer's learning rates to the schedule's value at the scheduler's restored step.

    A checkpoint stores the rates its own schedule chose for the next step; after a resume with another
    ``--max_train_steps`` (so another schedule) the first step would still use them. For an unchanged schedule
    this rewrites the same values. diffusers' schedules are all ``LambdaLR``s, whose functions are not saved.
    """
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates
