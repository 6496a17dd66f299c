"""The client side of the Hub stand-in (hub_server.py): huggingface_hub and diffusers given a fresh home and cache,
pointed at the stand-in's URL, or offline; and model cards checked as the Hub would read them, their code run.

huggingface_hub reads its settings (endpoint, cache, offline mode, ...) from the environment when it is imported,
so besides the environment variables the module-level copies are patched too, through ``monkeypatch`` (undone
after each test)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import diffusers
import yaml
from huggingface_hub import ModelCard, constants, hf_api


def isolate_hub(monkeypatch, home: Path) -> Path:
    """Give huggingface_hub (and diffusers) a fresh, empty home and cache under ``home``, online mode, no token;
    returns the cache folder."""
    from huggingface_hub import _tree_cache

    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_tree_cache, "_IN_MEMORY_TREE_CACHE", {})
    return cache


def isolate_modules(monkeypatch, folder: Path) -> Path:
    """Send diffusers' copies of remote-code modules (``trust_remote_code=True``) to ``folder``; diffusers adds it
    to ``sys.path``, which is restored afterwards."""
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(folder))
    monkeypatch.setattr(sys, "path", list(sys.path))
    return folder


def use_endpoint(monkeypatch, url: str) -> None:
    """Send huggingface_hub (and diffusers' messages) to ``url``."""
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # the instance behind huggingface_hub.model_info & co.
    for module in (
        diffusers.utils.constants,
        diffusers.utils,
        diffusers.utils.hub_utils,
        diffusers.configuration_utils,
    ):
        monkeypatch.setattr(module, "HUGGINGFACE_CO_RESOLVE_ENDPOINT", url)


def go_offline(monkeypatch) -> None:
    """huggingface_hub and diffusers in offline mode."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", True)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def run_python_blocks(text: str) -> list[dict]:
    """Run each ```python block of ``text`` in a fresh namespace; returns the namespaces."""
    blocks = python_blocks(text)
    assert blocks, "the card shows no code"
    namespaces = []
    for block in blocks:
        namespace: dict = {"__name__": "__card__"}
        exec(compile(block, "<model card>", "exec"), namespace)
        namespaces.append(namespace)
    return namespaces


def load_valid_card(path: Path, *, pipeline_tag: str | None) -> ModelCard:
    """The card at ``path``, checked as the Hub would check its metadata, offline: the YAML header parses, holds
    the fields every card of this package has, and its model-index (if any) reads back as evaluation results."""
    card = ModelCard.load(path)
    header = yaml.safe_load(path.read_text().split("---\n")[1])
    assert header == card.data.to_dict()  # nothing lost or added by huggingface_hub's parser
    data = card.data
    assert data.library_name == "diffusers" and data.license == "apache-2.0"
    assert "diffusers" in data.tags
    assert data.pipeline_tag == pipeline_tag
    for result in data.eval_results or []:
        assert result.task_type and result.dataset_type and result.dataset_name
        assert isinstance(result.metric_value, float)
    assert "/tmp/" not in path.read_text() and str(Path.home()) not in path.read_text()
    return card
