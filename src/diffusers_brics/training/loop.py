"""The training loop both stages share: `Trainer` runs a `TrainingStage`.

The `Trainer` owns the accelerator and everything around a training step: preparing the stage's model, optimizer
and data, the learning-rate schedule, the EMA, checkpoints in diffusers' format and resuming from them (skipping
the batches a resumed epoch has already consumed), gradient accumulation, per-micro-batch seeds, the mean of the
logged losses over micro-batches and processes, the time budget, SIGTERM / SIGINT (a checkpoint, then exit), steps
with a non-finite loss or gradient (skipped, counted, and fatal after ``max_nonfinite_steps`` in a row), the
validation cadence, ``torch_compile`` (the trained module's calls compiled in place; checkpoints, the EMA and
validation see its plain weights), the final save and the Hub: with ``push_to_hub`` the repository is created
before anything else (so a bad token fails the run at once) and the stage's `TrainingStage.hub_files` are uploaded
at the end. A stage supplies its model, optimizer and data (`TrainingStage.setup`), one micro-batch
(`TrainingStage.training_step`, which applies its updates through `Trainer.apply_gradients`), validation and the
final artefacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, gather_object, set_seed
from accelerate.utils.other import is_compiled_module  # not re-exported by accelerate.utils before 1.1
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpointing import first_unreadable_file, resolve_checkpoint, save_checkpoint
from .config import LoopConfig, flat_settings
from .ema import HalfLifeEMA
from .hub import create_repository, default_repo_id, push_to_hub

logger = get_logger(__name__)


# One JSON line per validation in the output folder: step, training seconds and the held-out metrics.
VALIDATION_HISTORY = "validation_history.jsonl"


class TrainingStopped(RuntimeError):
    """Training cannot go on (repeated non-finite steps); the message says why and which checkpoint is intact."""


@dataclass
class StageParts:
    """What a stage trains: one model (checkpointed in diffusers' format as ``name``), its optimizer and data."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    # Objects the checkpoints must also hold (a discriminator and its optimizer...).
    extra_state: list[Any] = field(default_factory=list)
    # What the run trains on, for the log ("3133 training images, 393 held out").
    description: str = ""


class TrainingStage:
    """One training task for the `Trainer`. Subclasses implement the methods below; the trainer calls them in this
    order: `setup` once, `training_step` per micro-batch, `validate` every ``validation_steps`` and at the end
    (main process), `finish` once with the final EMA model (main process)."""

    def setup(self, trainer: Trainer) -> StageParts:
        raise NotImplementedError

    def training_step(self, trainer: Trainer, batch: Any, generator: torch.Generator, step: int) -> dict[str, float]:
        """One micro-batch inside ``accelerator.accumulate``; returns the values to log (floats)."""
        raise NotImplementedError

    def validate(self, trainer: Trainer, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Evaluate ``model`` (the EMA weights) at ``step``; returns metrics (logged by the trainer)."""
        return {}

    def finish(self, trainer: Trainer, model: torch.nn.Module, step: int, summary: dict[str, float]) -> None:
        """Save the final artefacts (model, metrics, card) into the output folder."""

    def hub_files(self) -> list[str]:
        """What ``--push_to_hub`` uploads after `finish`: paths relative to the output folder (``folder/*`` for a
        folder's content). Nothing else of the folder (checkpoints, logs, caches) leaves the machine."""
        return ["README.md", "metrics.json"]

    def check_in_sync(self, trainer: Trainer) -> None:
        """Verify that objects trained outside DDP are the same on every process (the trainer checks its model)."""

    def end_of_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Called on every process after each epoch (and when training stops within one): report what it skipped."""

    progress_keys: tuple[str, ...] = ("loss",)


class Trainer:
    """Runs a `TrainingStage` under the settings of a `LoopConfig`; see the module docstring."""

    def __init__(self, config: LoopConfig, project_name: str, tracker_config: dict | None = None):
        self.config = config
        self.accelerator = make_accelerator(config, project_name, tracker_config or flat_settings(config))
        self.global_step = 0
        self.model: torch.nn.Module | None = None
        self.optimizer = None
        self.lr_scheduler = None
        self.ema: EMAModel | None = None
        # Whether `model` is compiled (``torch_compile``): its forward then takes no torch.Generator.
        self.compiled = False
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self._step_is_bad = False
        # (optimizer, parameters, prepared, lr_scheduler) of the micro-batch's `apply_gradients` calls
        self._queued_updates: list[tuple] = []
        self._signal: int | None = None

    # ------------------------------------------------------------------ for stages
    @property
    def _mark_cudagraph_steps(self) -> bool:
        """Whether each micro-batch starts a new step of CUDA graph trees (``torch_compile_mode`` reduce-overhead)."""
        return self.compiled and self.config.torch_compile and self.config.torch_compile_mode == "reduce-overhead"

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def total_batch_size(self) -> int:
        """Images of one optimisation step, over processes and micro-batches."""
        c = self.config
        return c.train_batch_size * self.accelerator.num_processes * c.gradient_accumulation_steps

    def apply_gradients(
        self, loss: torch.Tensor, optimizer, parameters, *, prepared: bool = True, lr_scheduler=None,
        scale: float = 1.0,
    ) -> None:
        """Backward ``loss * scale`` and queue ``optimizer``'s update; the Trainer applies the queued updates after
        the stage's `training_step` returns, all of them or none (`_apply_queued_updates`).

        ``prepared``: an optimizer and model prepared by accelerate (which accumulates, syncs, clips at
        ``max_grad_norm`` and steps only at the end); otherwise (a module kept out of DDP) the loss is divided by
        the accumulation steps and the gradients are averaged over the processes here. At the end of an
        optimisation step every optimizer's gradients are checked before any optimizer steps: a non-finite loss or
        gradient of one drops the whole step (counted in `nonfinite_steps`), so a step is applied whole or not at all.
        """
        accelerator = self.accelerator
        if prepared:
            accelerator.backward(loss * scale)
        else:
            (loss * scale / self.config.gradient_accumulation_steps).backward()
        if accelerator.sync_gradients:
            parameters = [p for p in parameters if p.grad is not None]
            if not prepared:
                average_gradients(accelerator, parameters)
            if not self._gradients_are_finite(loss, parameters):
                self._step_is_bad = True
            self._queued_updates.append((optimizer, parameters, prepared, lr_scheduler))
        elif prepared:
            self._queued_updates.append((optimizer, parameters, prepared, lr_scheduler))

    def _apply_queued_updates(self) -> None:
        """Step the optimizers queued by this micro-batch's `apply_gradients`, or, where any gradient of the step
        was non-finite, none of them (their gradients are cleared; the schedules still advance with the step)."""
        queued, self._queued_updates = self._queued_updates, []
        sync = self.accelerator.sync_gradients
        for optimizer, parameters, prepared, lr_scheduler in queued:
            if sync and not self._step_is_bad and prepared and self.config.max_grad_norm:
                self.accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm)
            if not (sync and self._step_is_bad):
                optimizer.step()  # with accelerate: a no-op until the gradients are synchronised
            if lr_scheduler is not None:
                lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    def _gradients_are_finite(self, loss: torch.Tensor, parameters) -> bool:
        """Whether the loss and the (process-averaged) gradients are finite, agreed by all processes."""
        finite = torch.isfinite(loss.detach()).all()
        for p in parameters:
            finite = finite & torch.isfinite(p.grad).all()
        flag = finite.float().to(self.device).view(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum") / self.accelerator.num_processes
        return bool(flag.item() == 1.0)

    def unwrap(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """The trained module itself, without its DDP and torch.compile wrappers."""
        return plain_module(self.accelerator, model if model is not None else self.model)

    def forward_generator(self, generator: torch.Generator) -> torch.Generator | None:
        """The generator to pass to the trained model's forward: ``generator`` itself, or, for a compiled model
        (dynamo cannot trace a torch.Generator argument), None after seeding the global RNG, which the compiled
        random ops draw from, with a draw of ``generator``. The draws of a step stay a function of the run's seed
        and the step (a resumed compiled run draws what the uninterrupted one would), though not the eager run's."""
        if not self.compiled:
            return generator
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return None

    def ema_model(self) -> torch.nn.Module:
        """A copy of the trained model holding the EMA weights (the live weights without EMA), in eval mode."""
        return ema_copy(self.accelerator, self.model, self.ema)

    # ------------------------------------------------------------------ the loop
    def fit(self, stage: TrainingStage) -> None:
        """Train ``stage`` to the end (or to the time budget, or a signal); see the module docstring."""
        try:
            self._fit(stage)
        finally:
            # Release the prepared (DDP-wrapped) model before ending the run: if a DDP reducer were the last owner
            # of the gloo process group, collected at interpreter exit, the group's destructor would join its
            # worker thread while holding the GIL, and a worker still releasing a finished collective's tensors
            # would wait for the GIL: the process would never exit.
            self.model = self.optimizer = self.lr_scheduler = self.ema = None
            self.accelerator.free_memory()
            self.accelerator.end_training()

    def _fit(self, stage: TrainingStage) -> None:
        c, accelerator = self.config, self.accelerator
        if c.push_to_hub and accelerator.is_main_process:
            self._create_hub_repository()
        parts = stage.setup(self)
        self.model, self.optimizer, loader, self.lr_scheduler, steps_per_epoch, max_steps = self._prepare(parts)
        for obj in parts.extra_state:
            accelerator.register_for_checkpointing(obj)
        self.ema = make_ema(accelerator, self.model, c, self.total_batch_size)
        register_checkpoint_hooks(accelerator, parts.name, self.ema)
        self.global_step, epoch, skip = resume(accelerator, c, steps_per_epoch, self.lr_scheduler)
        first_step = self.global_step
        logger.info((f"{parts.description}; " if parts.description else "") + f"{max_steps} steps of batch "
                    f"{c.train_batch_size} x {accelerator.num_processes} processes x {c.gradient_accumulation_steps}")

        progress = step_progress(accelerator, c, max_steps, self.global_step)
        generator, micro_step, step_logs = torch.Generator(), 0, StepLogs()
        start = time.monotonic()
        self._paused = 0.0  # seconds of checkpoints and validation, left out of the training time
        time_limit_reached = False
        with stop_signals(self):
            while self.global_step < max_steps:
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                batches = accelerator.skip_first_batches(loader, skip) if skip else loader
                skip = 0
                for batch in batches:
                    # Per-step, per-process randomness that does not depend on where a run was interrupted.
                    generator.manual_seed(micro_batch_seed(c.seed, c.gradient_accumulation_steps, self.global_step,
                                                           micro_step, accelerator.process_index))
                    if self._mark_cudagraph_steps:
                        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs may reuse the last step's outputs
                    with accelerator.accumulate(self.model):
                        step_logs.add(stage.training_step(self, batch, generator, self.global_step))
                        self._apply_queued_updates()
                    if not accelerator.sync_gradients:
                        micro_step += 1
                        continue
                    micro_step = 0
                    logs = self._end_of_step(step_logs)
                    progress.update(1)
                    progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in stage.progress_keys})
                    stop = self._should_stop(start)
                    if stop:
                        max_steps = self.global_step
                        time_limit_reached = self._signal is None
                    paused = time.monotonic()
                    if self.global_step % c.checkpointing_steps == 0 or self.global_step >= max_steps:
                        save_checkpoint(accelerator, c.output_dir, self.global_step, c.checkpoints_total_limit)
                    if self._signal is not None:
                        self._exit_on_signal(progress)
                    if self.global_step % c.validation_steps == 0 and accelerator.is_main_process:
                        self._validate(stage, time.monotonic() - start - self._paused)
                    self._paused += time.monotonic() - paused
                    if self.global_step >= max_steps:
                        break
                stage.end_of_epoch(self, epoch)
                epoch += 1
        progress.close()
        elapsed = time.monotonic() - start - self._paused
        summary = {"train_seconds": elapsed, "train_images_per_second":
                   (self.global_step - first_step) * self.total_batch_size / max(elapsed, 1e-9),
                   "nonfinite_steps": self.nonfinite_steps, "time_limit_reached": time_limit_reached}
        check_in_sync(accelerator, self.model)
        stage.check_in_sync(self)
        if accelerator.is_main_process:
            stage.finish(self, self.ema_model(), self.global_step, summary)
            if c.push_to_hub:
                patterns = stage.hub_files()
                push_to_hub(c.output_dir, c.hub_model_id, patterns, token=c.hub_token)
                logger.info(f"uploaded {', '.join(patterns)} to the Hub repository {c.hub_model_id}")

    def _create_hub_repository(self) -> None:
        """Create the ``push_to_hub`` repository (``hub_model_id``, by default the output folder's name) before
        training, and record its full id in ``config.hub_model_id`` for the model card and the upload."""
        c = self.config
        c.hub_model_id = create_repository(default_repo_id(c.output_dir, c.hub_model_id), token=c.hub_token,
                                           private=c.hub_private_repo)
        logger.info(f"--push_to_hub: the model will be uploaded to the Hub repository {c.hub_model_id}")

    def _prepare(self, parts: StageParts):
        """``accelerator.prepare`` the model, optimizer and loader (then, with ``torch_compile``, compile the trained
        module in place), then the learning-rate schedule.

        The schedule spans the run's optimisation steps, counted from the *prepared* loader (its length is the
        number of batches one process sees in an epoch).
        """
        c, accelerator = self.config, self.accelerator
        model, optimizer, loader = accelerator.prepare(parts.model, parts.optimizer, parts.loader)
        if c.torch_compile:
            compile_in_place(plain_module(accelerator, model), c)
        # (also compiled when accelerate's own dynamo configuration compiled it, without --torch_compile)
        self.compiled = c.torch_compile or is_compiled_module(model)
        if len(loader) < c.gradient_accumulation_steps:
            raise ValueError(f"--gradient_accumulation_steps {c.gradient_accumulation_steps} exceeds the "
                             f"{len(loader)} batches of an epoch per process")
        steps_per_epoch = math.ceil(len(loader) / c.gradient_accumulation_steps)
        max_steps = c.max_train_steps or c.num_epochs * steps_per_epoch
        # The prepared schedule steps once per process per optimisation step, hence the factors.
        lr_scheduler = get_scheduler(c.lr_scheduler, parts.optimizer,
                                     num_warmup_steps=c.lr_warmup_steps * accelerator.num_processes,
                                     num_training_steps=max_steps * accelerator.num_processes)
        return model, optimizer, loader, accelerator.prepare(lr_scheduler), steps_per_epoch, max_steps

    def _end_of_step(self, step_logs: StepLogs) -> dict[str, float]:
        """After an optimisation step: the EMA (unless the step was dropped), the step count, the logs."""
        if self._step_is_bad:
            self.nonfinite_steps += 1
            self._nonfinite_in_a_row += 1
            logger.warning(f"step {self.global_step + 1}: non-finite loss or gradients, nothing applied "
                           f"({self._nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all)")
        else:
            self._nonfinite_in_a_row = 0
            if self.ema is not None:
                self.ema.step(self.unwrap().parameters())
        bad, self._step_is_bad = self._step_is_bad, False
        self.global_step += 1
        logs = {**step_logs.reduce(self.accelerator), "lr": self.lr_scheduler.get_last_lr()[0],
                "nonfinite_steps": float(self.nonfinite_steps)}
        self.accelerator.log(logs, step=self.global_step)
        if bad and self._nonfinite_in_a_row >= self.config.max_nonfinite_steps:
            raise TrainingStopped(
                f"{self._nonfinite_in_a_row} steps in a row had a non-finite loss or gradients (up to step "
                f"{self.global_step}); none was applied, and the last checkpoint in {self.config.output_dir!r} is "
                "intact. Lower the learning rate, use --max_grad_norm or --mixed_precision no, or check the data; "
                "--max_nonfinite_steps sets the limit"
            )
        return logs

    def _should_stop(self, start: float) -> bool:
        """Whether the time budget is spent or a stop signal came, decided together by all processes."""
        c = self.config
        local = float(self._signal is not None)
        if c.max_train_seconds:
            local = max(local, float(time.monotonic() - start >= c.max_train_seconds))
        if not c.max_train_seconds and self.accelerator.num_processes == 1:
            return bool(local)
        flag = torch.tensor([local], device=self.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0:
            if self._signal is None and c.max_train_seconds:
                logger.info(f"--max_train_seconds reached after {self.global_step} steps")
            elif self._signal is None:
                self._signal = signal.SIGTERM  # another process was signalled
            return True
        return False

    def _exit_on_signal(self, progress) -> None:
        name = signal.Signals(self._signal).name
        progress.close()
        logger.info(f"{name}: stopped at step {self.global_step} with checkpoint-{self.global_step} written; "
                    "resume with --resume_from_checkpoint latest")
        raise SystemExit(128 + int(self._signal))

    def _validate(self, stage: TrainingStage, train_seconds: float) -> None:
        """Validate the EMA model; its metrics go to the trackers, the log and one line of
        ``OUTPUT_DIR/validation_history.jsonl`` with the step and the training seconds so far (this process's, since
        the run or its resume started; checkpoints and validation left out)."""
        metrics = stage.validate(self, self.ema_model(), self.global_step)
        if metrics:
            self.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=self.global_step)
            logger.info(f"step {self.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        record = {"step": self.global_step, "train_seconds": round(train_seconds, 3), **metrics}
        with open(os.path.join(self.config.output_dir, VALIDATION_HISTORY), "a") as f:
            f.write(json.dumps(record) + "\n")


class stop_signals:
    """Within the block, SIGTERM and SIGINT set ``trainer._signal`` instead of killing the process: the loop then
    writes a checkpoint at the end of the current step and exits with status 128 + the signal's number."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.trainer._signal is not None:  # a second signal: leave now
                raise KeyboardInterrupt
            self.trainer._signal = signum
            logger.warning(f"{signal.Signals(signum).name} received: stopping after this step with a checkpoint")

        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc):
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        return False


# ---------------------------------------------------------------------------------------------- helpers
def make_accelerator(config: LoopConfig, project_name: str, tracker_config: dict) -> Accelerator:
    """An `Accelerator` from the loop settings, with logging, seeding and trackers set up."""
    # On machines without an accelerator, accelerate needs cpu=True to run multi-process (gloo) under torchrun.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # With torch_compile the trainer compiles the model itself: accelerate's dynamo configuration stays out of it.
    dynamo = {"dynamo_backend": "no"} if config.torch_compile else {}
    accelerator = Accelerator(
        cpu=config.cpu or (multi_process and not torch.cuda.is_available()),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        **dynamo,
    )
    if config.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU (on the CPU accelerate would silently train in fp32); "
                         "use --mixed_precision bf16")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(config.seed)
    if accelerator.is_main_process:
        os.makedirs(config.output_dir, exist_ok=True)
        if config.report_to != "none":
            accelerator.init_trackers(project_name, config={k: v for k, v in tracker_config.items()
                                                            if not isinstance(v, (list, dict))})
    return accelerator


def compile_in_place(module: torch.nn.Module, config: LoopConfig) -> None:
    """Compile the calls of the trained module with the ``torch_compile_*`` settings, in place
    (``nn.Module.compile``): no wrapper, so its state dict keys (no ``_orig_mod.``), parameters and DDP wrapper
    stay as they are. Inside DDP, whose forward dynamo cannot trace as one graph, the module's own call is the
    graph; DDP then all-reduces the gradients after the compiled backward (no overlap with it)."""
    if not hasattr(module, "compile"):
        raise ValueError(f"--torch_compile needs PyTorch 2.2 or later (nn.Module.compile), not {torch.__version__}")
    kwargs = dict(backend=config.torch_compile_backend, fullgraph=config.torch_compile_fullgraph)
    if config.torch_compile_backend == "inductor":
        kwargs["mode"] = config.torch_compile_mode
    logger.info(f"--torch_compile: {type(module).__name__}, " + ", ".join(f"{k} {v}" for k, v in kwargs.items())
                + "; the first steps compile its training forward")
    module.compile(**kwargs)


def plain_module(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module a prepared model wraps: without torch.compile's wrapper (whose state dict keys carry
    ``_orig_mod.``) and without DDP's."""
    if is_compiled_module(model):
        model = model._orig_mod
    return accelerator.unwrap_model(model)


def resume(accelerator: Accelerator, config: LoopConfig, steps_per_epoch: int, lr_scheduler) -> tuple[int, int, int]:
    """Load ``resume_from_checkpoint``; returns ``(global_step, first_epoch, batches_to_skip)``."""
    if not config.resume_from_checkpoint:
        return 0, 0, 0
    found = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint)
    if found is None:
        logger.info("no checkpoint to resume from; starting a new run")
        return 0, 0, 0
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
    logger.info(f"resumed from {path} at step {step}")
    return step, step // steps_per_epoch, (step % steps_per_epoch) * config.gradient_accumulation_steps


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


def make_ema(accelerator: Accelerator, model, config: LoopConfig, batch_size: int) -> EMAModel | None:
    """EMA of the (prepared) model's weights; None without ``use_ema``. Checkpoints hold it once
    `register_checkpoint_hooks` is given it.

    ``ema_schedule="stylegan"`` (the release's): `HalfLifeEMA` with ``ema_halflife_kimg`` (default
    ``10 * batch_size / 32``) and ``ema_rampup``; ``"warmup"``: diffusers' warm-up ``1 - (1 + step) ** -ema_power``
    capped at ``ema_max_decay``. ``batch_size`` is the images of one optimisation step.
    """
    settings = config.ema
    if not settings.use_ema:
        return None
    unwrapped = plain_module(accelerator, model)
    kwargs = dict(model_cls=type(unwrapped), model_config=unwrapped.config)
    if settings.ema_schedule == "stylegan":
        halflife_kimg = settings.ema_halflife_kimg or 10 * batch_size / 32
        ema = HalfLifeEMA(unwrapped.parameters(), halflife_images=halflife_kimg * 1000, batch_size=batch_size,
                          rampup=settings.ema_rampup or None, **kwargs)
    else:
        ema = EMAModel(unwrapped.parameters(), decay=settings.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
                       power=settings.ema_power, **kwargs)
    ema.to(accelerator.device)
    return ema


EMA_STATE_FILE = "ema_state.json"


def register_checkpoint_hooks(accelerator: Accelerator, name: str, ema: EMAModel | None) -> None:
    """Write the prepared model into checkpoints in diffusers' format, as diffusers' training examples do.

    ``checkpoint-N/<name>`` holds the model and ``checkpoint-N/<name>_ema`` its EMA weights (with the EMA's
    decay state in ``ema_state.json``), so any checkpoint loads with ``from_pretrained(path, subfolder=...)``.
    The optimizers, schedule, RNG states and other registered objects stay in accelerate's files beside them.
    """

    def only_model(models) -> torch.nn.Module:
        if len(models) != 1:  # the trainer prepares one model; a second would overwrite the first's folder
            raise RuntimeError(f"checkpoint hooks for {name!r} expect one prepared model, got {len(models)}")
        return plain_module(accelerator, models[0])

    def save_models(models, weights, output_dir: str) -> None:
        model = only_model(models)
        if accelerator.is_main_process:
            model.save_pretrained(os.path.join(output_dir, name))
            if ema is not None:
                ema_dir = os.path.join(output_dir, f"{name}_ema")
                ema_copy(accelerator, model, ema).save_pretrained(ema_dir)
                state = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
                with open(os.path.join(ema_dir, EMA_STATE_FILE), "w") as f:
                    json.dump(state, f, indent=2)
        weights.pop()  # saved above, not again in accelerate's own model file

    def load_models(models, input_dir: str) -> None:
        model = only_model(models)
        models.pop()  # loaded here, not by accelerate
        model.load_state_dict(type(model).from_pretrained(input_dir, subfolder=name).state_dict())
        if ema is not None:
            ema_dir = os.path.join(input_dir, f"{name}_ema")
            with open(os.path.join(ema_dir, EMA_STATE_FILE)) as f:
                state = json.load(f)
            shadow = [p.detach().clone() for p in type(model).from_pretrained(ema_dir).parameters()]
            ema.load_state_dict({**state, "shadow_params": shadow})
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_models)
    accelerator.register_load_state_pre_hook(load_models)


def ema_copy(accelerator: Accelerator, model, ema: EMAModel | None):
    """A copy of the model holding the EMA weights (the live weights without EMA), in eval mode."""
    unwrapped = plain_module(accelerator, model)
    copy = type(unwrapped).from_config(unwrapped.config).to(accelerator.device)
    copy.load_state_dict(unwrapped.state_dict())
    if ema is not None:
        ema.copy_to(copy.parameters())
    return copy.eval()


def log_image(accelerator: Accelerator, tag: str, image, step: int) -> None:
    """Send a PIL image to the active trackers (TensorBoard, Weights & Biases)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(image)}, step=step)


def step_progress(accelerator: Accelerator, config: LoopConfig, max_steps: int, initial: int) -> tqdm:
    """The training progress bar (main process). Under a time budget the step count is open-ended: count and
    rate, no step total or ETA."""
    budget = config.max_train_seconds
    return tqdm(total=None if budget else max_steps, initial=initial, desc=f"steps (budget {budget:g} s)" if budget
                else "steps", disable=not accelerator.is_local_main_process)


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
