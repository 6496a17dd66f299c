"""Checkpoints that are never half-written: saved to a ``.partial`` folder, then renamed into place."""

from __future__ import annotations

import logging
import os
import re
import shutil

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


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None = None) -> str:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>``, atomically; prunes to ``total_limit``."""
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
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(partial, final)
        if total_limit is not None:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def first_unreadable_file(folder: str) -> tuple[str, Exception] | None:
    """The first file of a checkpoint folder that cannot be read back (safetensors, torch pickles, JSON), with the
    error, or None. Used to name the damaged file when a checkpoint fails to load."""
    import json

    import torch
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
