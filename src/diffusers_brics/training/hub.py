"""Model cards and uploads to the Hugging Face Hub."""

from __future__ import annotations

import os
from collections.abc import Callable

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

# Files of a training run that are not part of the published model.
IGNORE_PATTERNS = ["checkpoint-*", "logs/*", "*.partial/*", "step_*", "epoch_*"]


def write_model_card(
    output_dir: str,
    *,
    title: str,
    description: str,
    config: dict,
    metrics: dict[str, float] | None = None,
    image: str | None = None,
    dataset: str | None = None,
    tags: tuple[str, ...] = ("diffusers", "brics", "autoencoder"),
) -> str:
    """Write ``output_dir/README.md`` with metadata, the configuration, metrics and an image; returns its path."""
    data = ModelCardData(library_name="diffusers", license="apache-2.0", tags=list(tags))
    if dataset and not os.path.exists(dataset):
        data.datasets = [dataset]
    lines = [f"# {title}", "", description, ""]
    if image:
        lines += [f"![samples]({image})", ""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
        lines.append("")
    lines += ["## Configuration", "", "| option | value |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in config.items()]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


def push_to_hub(
    output_dir: str,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    upload: Callable[..., object] | None = None,
    create: Callable[..., object] | None = None,
) -> None:
    """Create ``repo_id`` (if needed) and upload ``output_dir`` without checkpoints and logs.

    ``upload`` and ``create`` default to huggingface_hub's ``upload_folder`` and ``create_repo`` (looked up at
    call time, so they can be replaced for offline checks).
    """
    (create or create_repo)(repo_id, exist_ok=True, token=token, private=private)
    (upload or upload_folder)(repo_id=repo_id, folder_path=output_dir, token=token, ignore_patterns=IGNORE_PATTERNS,
           commit_message="Upload BRICS model")
