"""The trainings' command-line flags: argparse types that name the rule a value breaks, the flags every stage shares
(`add_loop_arguments`), their defaults read from a settings class (`read_field_defaults`), the training recipes that
change some of them (`defer_to_recipe`, `apply_recipe`), and the checks of combinations that cannot work."""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from .config import EMAConfig, field_defaults


#: diffusers' learning-rate schedules (`diffusers.optimization.SchedulerType`), written out so that the parsers and
#: their help need no torch (tests/test_settings.py checks them against diffusers)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "piecewise_constant")  # fmt: skip


# ---------------------------------------------------------------------------------------------- argparse types
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


def read_field_defaults(parser: argparse.ArgumentParser, cls: type) -> None:
    """Give every flag of ``parser`` that names a field of ``cls`` that field's default (`field_defaults`): the
    parser holds no defaults of its own. Every flag must name a field with a default, or be required."""
    defaults = field_defaults(cls)
    for action in parser._actions:
        if action.dest == "help" or action.required:
            continue
        if action.dest not in defaults:
            raise TypeError(f"the flag --{action.dest} is not a field of {cls.__name__} with a default")
        action.default = defaults[action.dest]


# ---------------------------------------------------------------------------------------------- flags
def add_loop_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """The flags of `DataConfig`, `LoopConfig` and `EMAConfig` (their defaults are read from a stage's settings class
    by `read_field_defaults`); returns the groups by title ("data", "training", "run", "validation", "logging and
    checkpoints", "hub") for a stage to add its own flags."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset id or local dataset folder (default: embedded emoji)")
    data.add_argument("--dataset_config_name", help="the dataset's configuration, for --dataset_name")
    data.add_argument("--train_data_dir", help="a folder of images (datasets' imagefolder)")
    data.add_argument("--image_column", help="default: the first Image column")
    data.add_argument("--cache_dir", help="where datasets caches downloads")
    data.add_argument(
        "--strict_data",
        action="store_true",
        help="stop at the first unreadable image instead of skipping it (skips are counted and reported)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--train_batch_size", type=positive_int, help="images per process")
    train.add_argument("--num_epochs", type=positive_int, help="epochs, unless --max_train_steps")
    train.add_argument("--max_train_steps", type=positive_int, help="optimisation steps (overrides --num_epochs)")
    train.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, help="diffusers' learning-rate schedule")
    train.add_argument("--lr_warmup_steps", type=non_negative_int, help="linear warm-up steps of the schedule")
    train.add_argument(
        "--max_grad_norm", type=positive_float, help="clip the trained model's gradient norm (unset: no clipping)"
    )
    train.add_argument(
        "--max_nonfinite_steps",
        type=positive_int,
        help="a step with a non-finite loss or gradient is skipped (nothing applied, EMA untouched); "
        "this many in a row stop training, the last checkpoint intact",
    )
    train.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        help="keep an EMA of the weights, validated and saved at the end",
    )
    train.add_argument(
        "--ema_schedule",
        choices=["stylegan", "warmup", "ema-pytorch"],
        help="stylegan: half-life --ema_halflife_kimg with --ema_rampup (the BRICS release's stage 1); warmup: "
        "diffusers' EMAModel warm-up capped at --ema_max_decay, every step; ema-pytorch: that warm-up on "
        "ema-pytorch's cadence, --ema_update_every and --ema_update_after_step (the release's stage 2)",
    )
    train.add_argument("--ema_max_decay", type=unit_interval, help="warmup and ema-pytorch schedules: the cap")
    train.add_argument(
        "--ema_power",
        type=positive_float,
        help="warmup and ema-pytorch schedules: decay = 1 - (k - U) ** -power at optimisation step k (U: 0 for "
        "warmup, --ema_update_after_step for ema-pytorch)",
    )
    train.add_argument(
        "--ema_update_every",
        type=positive_int,
        help="ema-pytorch schedule: touch the EMA every N optimisation steps (ema-pytorch's and the release's 10)",
    )
    train.add_argument(
        "--ema_update_after_step",
        type=non_negative_int,
        help="ema-pytorch schedule: the EMA copies the weights up to this step and once more at its first average "
        "after it (ema-pytorch's and the release's 100)",
    )
    train.add_argument(
        "--ema_halflife_kimg",
        type=positive_float,
        help="stylegan schedule: half-life in thousands of images (default: 10 * total batch / 32)",
    )
    train.add_argument(
        "--ema_rampup",
        type=non_negative_float,
        help="stylegan schedule: half-life ramp-up as a fraction of the images seen (0: none)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", help="checkpoints, logs and the final model")
    run.add_argument("--seed", type=int, help="seeds initialisation and every random draw of training")
    run.add_argument("--gradient_accumulation_steps", type=positive_int, help="micro-batches per optimisation step")
    run.add_argument(
        "--max_train_seconds",
        type=positive_float,
        help="stop, with a checkpoint and the final save, after this much time in this invocation (a resumed run "
        "gets it anew; the learning-rate schedule still spans the step count)",
    )
    run.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        help="autocast precision (fp16 needs a GPU; default: accelerate's configuration)",
    )
    run.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is available")
    run.add_argument(
        "--torch_compile",
        action="store_true",
        help="compile the trained network with torch.compile (the first steps are slower while it "
        "compiles); only its training forward: validation, sampling, the discriminator and the "
        "perceptual loss run eagerly, and checkpoints hold the plain module's weights. Its random "
        "draws then come from the global RNG, seeded per step (deterministic, but not the eager "
        "run's draws)",
    )
    run.add_argument(
        "--torch_compile_mode",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode (inductor backend only)",
    )
    run.add_argument(
        "--torch_compile_backend",
        help="torch.compile backend: inductor generates kernels; eager and aot_eager only trace (checks "
        "that the model compiles, in seconds)",
    )
    run.add_argument(
        "--torch_compile_fullgraph",
        action=argparse.BooleanOptionalAction,
        help="trace the whole training forward as one graph, failing at a graph break (the BRICS "
        "autoencoder, diffusers' AutoencoderKL, VQModel and UNet2DModel all trace as one graph); "
        "--no-torch_compile_fullgraph lets dynamo run the breaks in Python",
    )
    val = parser.add_argument_group("validation")
    val.add_argument("--validation_steps", type=positive_int, help="validate every N steps")
    log = parser.add_argument_group("logging and checkpoints")
    log.add_argument("--report_to", choices=["tensorboard", "wandb", "all", "none"], help="trackers")
    log.add_argument("--logging_dir", help="tracker folder inside --output_dir")
    log.add_argument("--checkpointing_steps", type=positive_int, help="checkpoint every N steps")
    log.add_argument("--checkpoints_total_limit", type=positive_int, help="keep this many newest checkpoints")
    log.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint-<step> folder")
    hub = parser.add_argument_group("hub")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        help="create the Hub repository before training and upload the model, its card, metrics and "
        "samples at the end (never checkpoints, logs or caches)",
    )
    hub.add_argument(
        "--hub_model_id", help="the Hub repository, 'name' or 'user/name' (default: the --output_dir folder's name)"
    )
    hub.add_argument("--hub_token", help="default: the token huggingface_hub finds")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repository private")
    return {"data": data, "training": train, "run": run, "validation": val, "logging and checkpoints": log, "hub": hub}


# ---------------------------------------------------------------------------------------------- recipes
def defer_to_recipe(parser: argparse.ArgumentParser, recipes: dict[str, dict[str, Any]]) -> None:
    """Let ``--training_recipe`` choose the defaults of the flags its recipes set: each such flag then defaults to
    the chosen recipe's value, or to its own default where the recipe leaves it alone (`apply_recipe`). A flag
    given on the command line always wins. The recipes' values are added to the flags' help."""
    names = {name for values in recipes.values() for name in values}
    fallback = {}
    for action in parser._actions:
        if action.dest not in names:
            continue
        fallback[action.dest] = action.default
        per_recipe = "; ".join(
            f"{recipe} {values.get(action.dest, action.default)}" for recipe, values in recipes.items()
        )
        action.help = f"{action.help or ''} (default per --training_recipe: {per_recipe})".replace("%", "%%")
        action.default = argparse.SUPPRESS  # absent from the namespace unless given
    parser.set_defaults(_recipe_fallback=fallback)


def apply_recipe(args: argparse.Namespace, values: dict[str, Any]) -> None:
    """Fill the flags `defer_to_recipe` deferred and the command line left out: the recipe's ``values``, else the
    flag's own default."""
    for name, default in args._recipe_fallback.items():
        if not hasattr(args, name):
            setattr(args, name, values.get(name, default))
    del args._recipe_fallback


def check_loop_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot work, through ``parser.error``."""
    cadence = {name: value for name, value in field_defaults(EMAConfig).items() if name.startswith("ema_update")}
    if args.ema_schedule != "ema-pytorch":
        for name, default in cadence.items():
            if getattr(args, name) != default:
                parser.error(
                    f"--{name} applies to --ema_schedule ema-pytorch, not to --ema_schedule {args.ema_schedule}"
                )
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        parser.error(f"--output_dir {args.output_dir!r} is a file, not a folder")
    for tracker in ("wandb", "tensorboard"):
        if args.report_to in (tracker, "all") and importlib.util.find_spec(tracker) is None:
            parser.error(
                f"--report_to {args.report_to} needs the {tracker} package (pip install {tracker}), or use "
                "--report_to none"
            )
    if args.torch_compile:
        from torch._dynamo import list_backends

        if args.torch_compile_backend not in list_backends(exclude_tags=()):
            parser.error(
                f"--torch_compile_backend {args.torch_compile_backend!r} is not a torch.compile backend; "
                f"choose one of {', '.join(['eager', 'aot_eager', *list_backends()])}"
            )
        if args.torch_compile_mode != "default" and args.torch_compile_backend != "inductor":
            parser.error(
                f"--torch_compile_mode {args.torch_compile_mode} applies to the inductor backend, not to "
                f"--torch_compile_backend {args.torch_compile_backend}"
            )
