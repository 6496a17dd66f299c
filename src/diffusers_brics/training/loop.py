"""The training loop both stages share: `Trainer` runs a `TrainingStage`.

The `Trainer` owns the accelerator and everything around a training step: preparing the stage's model, optimizer
and data, the learning-rate schedule, the EMA, checkpoints in diffusers' format and resuming from them (skipping
the batches a resumed epoch has already consumed), gradient accumulation, per-micro-batch seeds, the mean of the
logged losses over micro-batches and processes, the time budget, SIGTERM / SIGINT (a checkpoint, then exit), steps
with a non-finite loss or gradient (skipped, counted, and fatal after ``max_nonfinite_steps`` in a row), the
validation cadence, ``torch_compile`` (the trained module's calls compiled in place; checkpoints, the EMA and
validation see its plain weights), the final save and the Hub: with ``push_to_hub`` the repository is created
before anything else (so a bad token fails the run at once) and the stage's `TrainingStage.hub_files` are uploaded
at the end. A run ends with the line ``saved to PATH`` (`TrainingStage.saved_folder`); a run refused before it
trains (its data, its settings) leaves none of the folders it created (output, trackers' logs) behind empty: the
trackers start once the stage is set up. A stage supplies its model, optimizer and data (`TrainingStage.setup`),
one micro-batch (`TrainingStage.training_step`, which applies its updates through `Trainer.apply_gradients`),
validation and the final artefacts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils.other import is_compiled_module  # not re-exported by accelerate.utils before 1.1
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from .accelerator_setup import compile_in_place, make_accelerator, plain_module, remove_empty_folders, start_trackers
from .checkpointing import register_checkpoint_hooks, save_checkpoint
from .config import LoopConfig, flat_settings
from .distributed import average_gradients, check_in_sync, micro_batch_seed
from .ema import ema_copy, make_ema
from .hub import create_repository, default_repo_id, push_to_hub
from .reporting import StepLogs, step_progress
from .resume import resume
from .signals import stop_signals

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

    def saved_folder(self, output_dir: str) -> str:
        """Where `finish` saved the model, for the run's last line (``saved to PATH``): by default ``output_dir``."""
        return output_dir

    def check_in_sync(self, trainer: Trainer) -> None:
        """Verify that objects trained outside DDP are the same on every process (the trainer checks its model)."""

    def end_of_epoch(self, trainer: Trainer, epoch: int) -> None:
        """Called on every process after each epoch (and when training stops within one): report what it skipped."""

    progress_keys: tuple[str, ...] = ("loss",)


class Trainer:
    """Runs a `TrainingStage` under the settings of a `LoopConfig`; see the module docstring."""

    def __init__(self, config: LoopConfig, project_name: str, tracker_config: dict | None = None):
        self.config = config
        # the folders this run creates, removed again if they are still empty when the run fails (see `fit`)
        self._new_folders = [path for path in (os.path.join(config.output_dir, config.logging_dir), config.output_dir)
                             if not os.path.exists(path)]
        self._trackers = (project_name, tracker_config or flat_settings(config))
        self.accelerator = make_accelerator(config)
        self.global_step = 0
        self.model: torch.nn.Module | None = None
        self.optimizer = None
        self.lr_scheduler = None
        self.ema: EMAModel | None = None
        # Whether `model` is compiled (``torch_compile``): its forward then takes no torch.Generator.
        self.compiled = False
        self.nonfinite_steps = 0
        self.micro_step = 0  # the micro-batch within the optimisation step, 0 .. gradient_accumulation_steps - 1
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

    def example_positions(self, count: int) -> range:
        """The positions of this process's current micro-batch of ``count`` examples in the optimisation step's
        whole batch: accelerate deals an epoch's batches to the processes in turn, so micro-batch ``m`` of process
        ``r`` is batch ``m * processes + r`` of the step, as one process of the whole batch would see it (for
        `distributed.example_generators`)."""
        first = (self.micro_step * self.accelerator.num_processes + self.accelerator.process_index)
        return range(first * self.config.train_batch_size, first * self.config.train_batch_size + count)

    def apply_gradients(
        self, loss: torch.Tensor, optimizer, parameters, *, prepared: bool = True, lr_scheduler=None,
        scale: float = 1.0,
    ) -> None:
        """Backward ``loss * scale`` and queue ``optimizer``'s update; the Trainer applies the queued updates after
        the stage's `training_step` returns, all of them or none (`apply_queued_updates`).

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

    def apply_queued_updates(self) -> None:
        """Step the optimizers queued by this micro-batch's `apply_gradients`, or, where any gradient of the step
        was non-finite, none of them (their gradients are cleared; the schedules still advance with the step). A
        stage may call it within `training_step` where a later forward needs the updated weights."""
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
        except BaseException:
            if self.accelerator.is_main_process:
                remove_empty_folders(self._new_folders)
            raise
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
        start_trackers(accelerator, c, *self._trackers)
        for obj in parts.extra_state:
            accelerator.register_for_checkpointing(obj)
        self.ema = make_ema(accelerator, self.model, c, self.total_batch_size)
        register_checkpoint_hooks(accelerator, parts.name, self.ema)
        self.global_step, epoch, skip, trained_before = resume(accelerator, c, steps_per_epoch, self.lr_scheduler)
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
                    self.micro_step = micro_step
                    if self._mark_cudagraph_steps:
                        torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs may reuse the last step's outputs
                    with accelerator.accumulate(self.model):
                        step_logs.add(stage.training_step(self, batch, generator, self.global_step))
                        self.apply_queued_updates()
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
                    trained = trained_before + paused - start - self._paused  # every invocation's, up to here
                    if self.global_step % c.checkpointing_steps == 0 or self.global_step >= max_steps:
                        save_checkpoint(accelerator, c.output_dir, self.global_step, c.checkpoints_total_limit,
                                        train_seconds=trained)
                    if self._signal is not None:
                        self._exit_on_signal(progress)
                    if self.global_step % c.validation_steps == 0 and accelerator.is_main_process:
                        self._validate(stage, trained)
                    self._paused += time.monotonic() - paused
                    if self.global_step >= max_steps:
                        break
                stage.end_of_epoch(self, epoch)
                epoch += 1
        progress.close()
        elapsed = time.monotonic() - start - self._paused
        summary = {"train_seconds": trained_before + elapsed, "train_images_per_second":
                   (self.global_step - first_step) * self.total_batch_size / max(elapsed, 1e-9),
                   "nonfinite_steps": self.nonfinite_steps, "time_limit_reached": time_limit_reached,
                   # what a bit-for-bit repeat needs beside the command: the thread count orders float sums
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "processes": accelerator.num_processes}
        check_in_sync(accelerator, self.model)
        stage.check_in_sync(self)
        if accelerator.is_main_process:
            stage.finish(self, self.ema_model(), self.global_step, summary)
            if c.push_to_hub:
                patterns = stage.hub_files()
                push_to_hub(c.output_dir, c.hub_model_id, patterns, token=c.hub_token)
                logger.info(f"uploaded {', '.join(patterns)} to the Hub repository {c.hub_model_id}")
            logger.info(f"saved to {stage.saved_folder(c.output_dir)}")

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
