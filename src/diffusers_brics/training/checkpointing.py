"""Checkpoints, never half-written: `save_checkpoint` saves to a ``.partial`` folder, then renames it into place;
`register_checkpoint_hooks` puts the trained model and its EMA into each one in diffusers' format; `list_checkpoints`,
`resolve_checkpoint` and `first_unreadable_file` find them, the one to resume from and a damaged file;
`checkpoint_train_seconds` reads the training time a checkpoint records."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel

from .accelerator_setup import plain_module
from .ema import ema_copy

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_PARTIAL = re.compile(r"^checkpoint-(\d+)\.partial$")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> tuple[int, str] | None:
    """``"latest"`` -> the newest complete checkpoint (or None); a path -> ``(step, path)``, checked."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        newest = checkpoints[-1][0] if checkpoints else -1
        for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
            match = _PARTIAL.match(name)
            if match and int(match.group(1)) > newest:
                logger.warning(f"skipping the incomplete checkpoint {os.path.join(output_dir, name)} (a save that was "
                               "interrupted); resuming from " + (checkpoints[-1][1] if checkpoints else "the start"))
        return checkpoints[-1] if checkpoints else None
    path = resume_from_checkpoint
    if not os.path.isdir(path):
        path = os.path.join(output_dir, resume_from_checkpoint)
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    if not os.path.isdir(path) or not match:
        raise FileNotFoundError(
            f"resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint-<step> folder "
            f"(looked in {output_dir!r}); use 'latest' to pick the newest one"
        )
    return int(match.group(1)), path


TRAINER_STATE_FILE = "trainer_state.json"


def save_checkpoint(
    accelerator, output_dir: str, step: int, total_limit: int | None = None, train_seconds: float | None = None
) -> str:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>``, atomically; prunes to ``total_limit``.
    ``train_seconds``, the training time up to ``step``, goes into its ``trainer_state.json`` for a resumed run to
    count on from."""
    if total_limit is not None and total_limit < 1:
        raise ValueError(f"total_limit must be >= 1 (or None to keep every checkpoint), got {total_limit}")
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    if accelerator.is_main_process:
        if os.path.exists(partial):  # left by an interrupted save
            shutil.rmtree(partial)
        os.makedirs(partial)  # before any process writes its random state into it
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if train_seconds is not None:
            with open(os.path.join(partial, TRAINER_STATE_FILE), "w") as f:
                json.dump({"step": step, "train_seconds": train_seconds}, f, indent=2)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def checkpoint_train_seconds(folder: str) -> float | None:
    """The training time up to a checkpoint, from its ``trainer_state.json``; None for a checkpoint without one."""
    path = os.path.join(folder, TRAINER_STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return float(json.load(f)["train_seconds"])


def first_unreadable_file(folder: str) -> tuple[str, Exception] | None:
    """The first file of a checkpoint folder that cannot be read back (safetensors, torch pickles, JSON), with the
    error, or None. Used to name the damaged file when a checkpoint fails to load."""
    from safetensors import safe_open

    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            try:
                if name.endswith(".safetensors"):
                    with safe_open(path, framework="pt") as f:
                        for key in f.keys():
                            f.get_tensor(key)
                elif name.endswith((".bin", ".pkl", ".pt", ".pth")):
                    torch.load(path, map_location="cpu", weights_only=False)
                elif name.endswith(".json"):
                    with open(path) as f:
                        json.load(f)
            except Exception as error:  # noqa: BLE001 - any failure means this file is the damaged one
                return path, error
    return None


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
