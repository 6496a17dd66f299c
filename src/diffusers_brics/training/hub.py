"""Model cards and uploads to the Hugging Face Hub.

With ``--push_to_hub`` the `Trainer` creates the model repository when training starts (`create_repository`: a bad
token or a missing permission stops the run at once, not after hours of training) and, at the end, uploads the
files of the output folder that make the published model (`push_to_hub`, with the stage's `hub_files`): the model,
its card, metrics and sample images; never checkpoints, logs, caches (stage 2's key codes) or anything else the
folder holds. The card (`write_model_card`) fills the template that ships with the package,
``diffusers_brics/training/model_card.md`` (the repository's ``model_cards/template.md`` is the same file), and
carries no local path: settings and data sources that are local paths are reduced to their names (`local_name`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from importlib.resources import as_file, files
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .config import DataConfig, flat_settings

TEMPLATE = "model_card.md"  # package data beside this module


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


# ---------------------------------------------------------------------------------------------- model cards
def local_name(value: Any) -> Any:
    """``value`` without a local path: a string naming an existing file or folder, or an absolute path, becomes its
    last part (``/data/ffhq/`` -> ``ffhq``); anything else (a Hub id, a number, a flag) stays as it is."""
    if isinstance(value, str):
        path = os.path.expanduser(value)
        if os.path.isabs(path) or os.path.exists(path):
            return os.path.basename(os.path.normpath(path))
    return value


def hub_id(name: str | None) -> str | None:
    """``name`` if it names a Hub repository (a valid repo id that is not a local file or folder), else None."""
    if not name or os.path.exists(os.path.expanduser(name)):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def dataset_of(data: DataConfig) -> tuple[str, str]:
    """``(type, name)`` of the training images, for a card's model-index and text, without local paths: a Hub
    dataset is its id twice; otherwise the type is ``local`` (a dataset folder), ``imagefolder``
    (``--train_data_dir``) or ``noto-emoji`` (the embedded images) and the name says which folder."""
    if hub_id(data.dataset_name):
        return data.dataset_name, data.dataset_name
    if data.dataset_name:
        return "local", f"the local dataset '{local_name(data.dataset_name)}'"
    if data.train_data_dir:
        return "imagefolder", f"the image folder '{local_name(data.train_data_dir)}'"
    return "noto-emoji", data.describe()


def public_settings(settings: Any) -> list[tuple[str, str]]:
    """``(option, value)`` rows of a settings object for a model card: `flat_settings` (no secrets, no unset
    values) with local paths reduced to their names (`local_name`), Hub ids kept."""
    return [(key, str(local_name(value))) for key, value in flat_settings(settings).items()]


def write_model_card(output_dir: str, data: ModelCardData, *, title: str, summary: str, usage: list[dict[str, str]],
                     training: str, settings: list[tuple[str, str]], image: str | None = None,
                     results: list[tuple[str, str]] | None = None, results_note: str = "") -> str:
    """Write ``output_dir/README.md`` from the package's template; returns its path.

    Args:
        data: the card's metadata (``library_name``, ``license``, ``tags``, ``model-index``...).
        title, summary: the heading and the paragraph under it (markdown).
        usage: the ways to load and use the model, each ``{"text": markdown, "code": python}``.
        training: how the model was trained (markdown); ``settings``: the ``(option, value)`` table below it.
        image: a picture of the folder (samples, reconstructions) shown under the summary.
        results: ``(metric, value)`` rows, explained by ``results_note``.
    """
    with as_file(files("diffusers_brics") / "training" / TEMPLATE) as template:
        card = ModelCard.from_template(data, template_path=str(template), title=title, summary=summary, usage=usage,
                                       training=training, settings=settings, image=image, results=results or [],
                                       results_note=results_note)
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path
