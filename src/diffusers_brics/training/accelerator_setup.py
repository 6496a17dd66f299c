"""The accelerator and the module it prepares: `make_accelerator` builds the `Accelerator` from the loop settings
(`start_trackers` starts its trackers once a run is set up), `compile_in_place` compiles the prepared module's calls
(``torch_compile``) and `plain_module` is the module without its DDP and torch.compile wrappers;
`remove_empty_folders` clears what a refused run created."""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from accelerate.utils.other import is_compiled_module  # not re-exported by accelerate.utils before 1.1

from .config import LoopConfig

logger = get_logger(__name__)


def make_accelerator(config: LoopConfig) -> Accelerator:
    """An `Accelerator` from the loop settings, with logging and seeding set up and the output folder made (the
    trackers are started later, by `start_trackers`)."""
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
    return accelerator


def start_trackers(accelerator: Accelerator, config: LoopConfig, project_name: str, tracker_config: dict) -> None:
    """Start ``--report_to``'s trackers (their files under ``output_dir/logging_dir``) with the run's settings,
    ``tracker_config`` (lists and dicts left out); nothing with ``report_to`` none."""
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers(project_name, config={k: v for k, v in tracker_config.items()
                                                        if not isinstance(v, (list, dict))})


def remove_empty_folders(folders: list[str]) -> None:
    """Remove each of ``folders`` that holds no file (its empty subfolders with it); folders with a file stay."""
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, _, files in os.walk(folder, topdown=False):
            if not files:
                try:
                    os.rmdir(root)  # fails, as it should, where a subfolder with files remains
                except OSError:
                    pass


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
