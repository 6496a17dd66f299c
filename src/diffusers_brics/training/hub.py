"""Uploads to the Hugging Face Hub.

With ``--push_to_hub`` the `Trainer` creates the model repository when training starts (`create_repository`: a bad
token or a missing permission stops the run at once, not after hours of training) and, at the end, uploads the
files of the output folder that make the published model (`push_to_hub`, with the stage's `hub_files`): the model,
its card (`training.model_card`), metrics and sample images; never checkpoints, logs, caches (stage 2's key codes)
or anything else the folder holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from huggingface_hub import create_repo, upload_folder


class HubRepositoryError(RuntimeError):
    """The Hub repository of ``--push_to_hub`` cannot be created (token, permission, name or network)."""


def default_repo_id(output_dir: str, hub_model_id: str | None) -> str:
    """``--hub_model_id``, by default the name of the output folder (as diffusers' training examples do)."""
    return hub_model_id or os.path.basename(os.path.abspath(output_dir))


def create_repository(repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Create the model repository ``repo_id`` unless it exists, and return its full id (``"user/name"`` for
    ``"name"``).

    Raises:
        HubRepositoryError: the Hub refused (a missing or read-only token, no right to create repos in that
            namespace, an invalid name) or cannot be reached; the message says which flags to check.
    """
    try:
        url = create_repo(repo_id, exist_ok=True, token=token, private=private)
    except Exception as error:  # HfHubHTTPError (401, 403...), HFValidationError, network errors
        cause = " ".join(str(error).split())
        raise HubRepositoryError(
            f"--push_to_hub: cannot create the Hub repository {repo_id!r} ({type(error).__name__}: {cause}). Check the "
            "token (--hub_token, else HF_TOKEN or `hf auth login`; it needs write access), your right to create "
            "repositories in that namespace, and --hub_model_id ('name' or 'user/name'; default: the --output_dir "
            "folder's name)"
        ) from error
    return url.repo_id


def push_to_hub(output_dir: str, repo_id: str, patterns: Iterable[str], *, token: str | None = None,
                upload: Callable[..., Any] | None = None) -> None:
    """Upload the files of ``output_dir`` that match ``patterns`` (paths relative to it, ``folder/*`` for a folder:
    ``upload_folder``'s ``allow_patterns``) to the model repository ``repo_id``, and nothing else. ``upload``
    defaults to huggingface_hub's ``upload_folder`` (looked up at call time)."""
    (upload or upload_folder)(repo_id=repo_id, folder_path=output_dir, allow_patterns=list(patterns), token=token,
                              commit_message="Upload BRICS model")


def pipeline_patterns(folder: str) -> list[str]:
    """The ``upload_folder`` patterns of a diffusers pipeline saved in ``folder``: ``model_index.json``, the folders
    of the components it lists and the module file its ``_class_name`` names, if any (a `BRICSPipeline`'s
    ``pipeline_brics.py``)."""
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    patterns = ["model_index.json"]
    if isinstance(index["_class_name"], list):
        patterns.append(f"{index['_class_name'][0]}.py")
    patterns += [f"{name}/*" for name, entry in index.items()
                 if not name.startswith("_") and isinstance(entry, list) and entry[0] is not None]
    return patterns
