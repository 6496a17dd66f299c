"""Pieces shared by the training scripts: accelerator set-up, trackers, resuming, process sync, time budget."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import time

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, gather_object, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpointing import resolve_checkpoint
from .ema import HalfLifeEMA

logger = get_logger(__name__)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a loss weight: 0 turns the term off)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1] (a decay, an Adam beta)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def add_common_arguments(
    parser: argparse.ArgumentParser, output_dir: str, ema_max_decay: float
) -> dict[str, argparse._ArgumentGroup]:
    """The flags both training scripts share: image source, run set-up, EMA, logging, checkpoints, Hub.

    Returns the argument groups by title, for a script to add its own flags to them.
    """
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset id or local dataset folder (default: embedded emoji)")
    data.add_argument("--dataset_config_name")
    data.add_argument("--train_data_dir", help="a folder of images (datasets' imagefolder)")
    data.add_argument("--image_column", help="default: the first Image column")
    data.add_argument("--cache_dir")
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=output_dir)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    run.add_argument("--max_train_seconds", type=positive_float, help="stop, with a checkpoint and the final save, after this "
                     "much training time (the learning-rate schedule still spans the step count)")
    run.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    run.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is available")
    run.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    run.add_argument("--ema_max_decay", type=unit_interval, default=ema_max_decay)
    run.add_argument("--ema_power", type=positive_float, default=3 / 4, help="EMA warm-up: decay = 1 - (1 + step) ** -power")
    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--report_to", default="tensorboard", choices=["tensorboard", "wandb", "all", "none"])
    log.add_argument("--logging_dir", default="logs")
    log.add_argument("--checkpointing_steps", type=positive_int, default=1000)
    log.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="keep this many newest checkpoints")
    log.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint-<step> folder")
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true")
    hub.add_argument("--hub_model_id")
    hub.add_argument("--hub_token")
    hub.add_argument("--hub_private_repo", action="store_true")
    return {"data": data, "run": run, "logging and checkpoints": log, "hub": hub}


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot work, through ``parser.error``."""
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    for tracker in ("wandb", "tensorboard"):
        if args.report_to in (tracker, "all") and importlib.util.find_spec(tracker) is None:
            parser.error(f"--report_to {args.report_to} needs the {tracker} package (pip install {tracker}), or use "
                         "--report_to none")


def make_accelerator(args: argparse.Namespace, project_name: str) -> Accelerator:
    """An `Accelerator` from the scripts' common flags, with logging, seeding and trackers set up."""
    # On machines without an accelerator, accelerate needs cpu=True to run multi-process (gloo) under torchrun.
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=args.cpu or (multi_process and not torch.cuda.is_available()),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("--mixed_precision fp16 needs a GPU (on the CPU accelerate would silently train in fp32); "
                         "use --mixed_precision bf16")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.report_to != "none":
            config = {k: v for k, v in vars(args).items() if v is not None and k != "hub_token"
                      and not isinstance(v, (list, dict))}
            accelerator.init_trackers(project_name, config=config)
    return accelerator


def prepare_with_schedule(accelerator: Accelerator, args: argparse.Namespace, model, optimizer, loader):
    """``accelerator.prepare`` the model, optimizer and loader, then the learning-rate schedule.

    The schedule spans the run's optimisation steps, counted from the *prepared* loader (its length is the number
    of batches one process sees in an epoch). Returns ``(model, optimizer, loader, lr_scheduler, steps_per_epoch,
    max_steps)``.
    """
    raw_optimizer = optimizer
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if len(loader) < args.gradient_accumulation_steps:
        raise ValueError(f"--gradient_accumulation_steps {args.gradient_accumulation_steps} exceeds the "
                         f"{len(loader)} batches of an epoch per process")
    steps_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    # The prepared schedule steps once per process per optimisation step, hence the factors.
    lr_scheduler = get_scheduler(args.lr_scheduler, raw_optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    return model, optimizer, loader, accelerator.prepare(lr_scheduler), steps_per_epoch, max_steps


def resume(accelerator: Accelerator, args: argparse.Namespace, steps_per_epoch: int,
           lr_scheduler) -> tuple[int, int, int]:
    """Load ``--resume_from_checkpoint``; returns ``(global_step, first_epoch, batches_to_skip)``."""
    if not args.resume_from_checkpoint:
        return 0, 0, 0
    found = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if found is None:
        logger.info("no checkpoint to resume from; starting a new run")
        return 0, 0, 0
    step, path = found
    try:
        accelerator.load_state(path)
    except Exception as error:  # a truncated file, or a checkpoint of another model or other flags
        raise ValueError(
            f"--resume_from_checkpoint: {path} cannot be loaded ({type(error).__name__}: {error}). A checkpoint holds "
            "the model, its optimizer and scheduler, and the objects the run's flags add (the EMA with --use_ema, the "
            "discriminator with --gan_weight > 0): resume with the model and flags of the run that wrote it, or "
            "resume from an earlier checkpoint"
        ) from error
    follow_schedule(lr_scheduler)
    logger.info(f"resumed from {path} at step {step}")
    return step, step // steps_per_epoch, (step % steps_per_epoch) * args.gradient_accumulation_steps


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


def make_ema(
    accelerator: Accelerator, model, args: argparse.Namespace, batch_size: int | None = None
) -> EMAModel | None:
    """EMA of the (prepared) model's weights; None with ``--no-use_ema``. Checkpoints hold it once
    `register_checkpoint_hooks` is given it.

    ``--ema_schedule stylegan`` (stage 1's default, the release's): `HalfLifeEMA` with ``--ema_halflife_kimg``
    (default ``10 * batch_size / 32``, the release's) and ``--ema_rampup``; ``warmup``: diffusers' warm-up
    ``1 - (1 + step) ** -ema_power`` capped at ``--ema_max_decay`` (stage 2, which has no ``--ema_schedule``).
    ``batch_size``, the images of one step, is needed by the ``stylegan`` schedule.
    """
    if not args.use_ema:
        return None
    unwrapped = accelerator.unwrap_model(model)
    kwargs = dict(model_cls=type(unwrapped), model_config=unwrapped.config)
    if getattr(args, "ema_schedule", "warmup") == "stylegan":
        if batch_size is None:
            raise ValueError("the stylegan EMA schedule needs the batch size of a step")
        halflife_kimg = args.ema_halflife_kimg or 10 * batch_size / 32
        ema = HalfLifeEMA(unwrapped.parameters(), halflife_images=halflife_kimg * 1000, batch_size=batch_size,
                          rampup=args.ema_rampup or None, **kwargs)
    else:
        ema = EMAModel(unwrapped.parameters(), decay=args.ema_max_decay, use_ema_warmup=True, inv_gamma=1.0,
                       power=args.ema_power, **kwargs)
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
        if len(models) != 1:  # both scripts prepare one model; a second would overwrite the first's folder
            raise RuntimeError(f"checkpoint hooks for {name!r} expect one prepared model, got {len(models)}")
        return accelerator.unwrap_model(models[0])

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
    unwrapped = accelerator.unwrap_model(model)
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


def step_progress(accelerator: Accelerator, args: argparse.Namespace, max_steps: int, initial: int) -> tqdm:
    """The training progress bar (main process). Under a time budget the step count is open-ended: count and
    rate, no step total or ETA."""
    budget = args.max_train_seconds
    return tqdm(total=None if budget else max_steps, initial=initial, desc=f"steps (budget {budget:g} s)" if budget
                else "steps", disable=not accelerator.is_local_main_process)


def time_is_up(accelerator: Accelerator, args: argparse.Namespace, start_time: float, step: int) -> bool:
    """Whether ``--max_train_seconds`` is spent (never without one), decided by the main process so that all
    processes stop together; logs the step it stopped at."""
    if not args.max_train_seconds:
        return False
    flag = torch.tensor([float(time.monotonic() - start_time >= args.max_train_seconds)], device=accelerator.device)
    if not broadcast(flag, from_process=0).item():
        return False
    logger.info(f"--max_train_seconds reached after {step} steps")
    return True


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


def micro_batch_seed(args: argparse.Namespace, step: int, micro_step: int, process_index: int) -> int:
    """The seed of one micro-batch's random draws (flips, noise, timesteps): a function of ``--seed``, the
    optimisation step, the micro-batch within it (``0 .. gradient_accumulation_steps - 1``) and the process, so a
    resumed run draws what the uninterrupted one would, and no two micro-batches share their draws."""
    micro_batch = step * args.gradient_accumulation_steps + micro_step
    return args.seed * 1_000_003 + micro_batch * 1009 + process_index


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters (as float32), in registration order."""
    digest = hashlib.sha256()
    for parameter in module.parameters():
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_in_sync(accelerator, model) -> None:
    """Fail loudly if the processes' weights diverged (they must be identical after data-parallel training)."""
    digests = gather_object([weights_digest(accelerator.unwrap_model(model))])
    if len(set(digests)) != 1:
        raise RuntimeError(f"weights differ across processes: {digests}")
    logger.info(f"weights identical on {len(digests)} process(es): sha256 {digests[0][:16]}")


def run_training(train, args: argparse.Namespace, accelerator: Accelerator) -> None:
    """``train(args, accelerator)``, then release what it prepared and end the run (trackers, process group).

    ``train`` must keep the prepared (DDP-wrapped) models in its own frame, so that they are gone when it returns.
    Otherwise the last owner of the gloo process group can be a DDP reducer collected at interpreter exit: the
    group's destructor then joins its worker thread while holding the GIL, and a worker still releasing the
    tensors of a finished collective waits for the GIL, so the process never exits. Once the wrappers are
    released, `destroy_process_group` drops the group instead, without holding the GIL.
    """
    train(args, accelerator)
    accelerator.free_memory()
    accelerator.end_training()
