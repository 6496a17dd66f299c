"""Model cards: the template the training scripts fill (shipped in the package, copied in ``model_cards/``), the
ready cards of the paper's configurations, their metadata (checked offline, as the Hub would parse it) and their
code, run against a Hub stand-in serving a tiny pipeline under the cards' repo ids."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml
from builders import tiny_unet
from hub_client import use_endpoint
from hub_server import serve_repos
from huggingface_hub import ModelCard

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"
READY = {"brics-ffhq.md": "org/brics-ffhq", "brics-church.md": "org/brics-church"}
PAPER_METRICS = {"fid", "clip_fid", "inception_score", "precision", "recall", "f1"}


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


def test_the_package_ships_the_template_of_the_model_cards():
    packaged = files("diffusers_brics") / "training" / "model_card.md"
    assert packaged.read_text(encoding="utf-8") == (CARDS / "template.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(READY))
def test_ready_cards_mark_the_papers_numbers_as_the_papers(name):
    card = load_valid_card(CARDS / name, pipeline_tag="unconditional-image-generation")

    assert {"brics", "latent-diffusion"} <= set(card.data.tags) and card.data.base_model is None
    results = card.data.eval_results
    assert PAPER_METRICS <= {r.metric_type for r in results}
    assert all(r.source_name.startswith("BRICS paper, Table") and "not a checkpoint of this repository" in
               r.source_name for r in results)
    assert "No checkpoint of ours exists yet" in card.text and "until checkpoints of ours exist" in card.text
    # both ways to load: this package's class and stock diffusers with trust_remote_code
    code = "\n".join(python_blocks(card.text))
    assert f'BRICSPipeline.from_pretrained("{READY[name]}")' in code
    assert f'DiffusionPipeline.from_pretrained("{READY[name]}", trust_remote_code=True)' in code


def test_the_church_card_has_the_papers_reconstruction_numbers():
    results = ModelCard.load(CARDS / "brics-church.md").data.eval_results
    reconstruction = {r.metric_type: r.metric_value for r in results if r.task_type == "image-to-image"}
    assert reconstruction == {"lpips": 0.0383, "ssim": 0.8438, "psnr": 26.34}  # paper Table 9
    generation = {r.metric_type: r.metric_value for r in results if r.task_type != "image-to-image"}
    assert generation["fid"] == 3.97 and generation["clip_fid"] == 5.10  # paper Table 4, config b + d


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A tiny BRICSPipeline saved to a folder (the layout `save_pretrained` writes, module files included)."""
    folder = tmp_path_factory.mktemp("tiny-pipeline")
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    BRICSPipeline(unet=tiny_unet(2), scheduler=default_scheduler(), vae=vae).save_pretrained(folder)
    return folder


def test_the_ready_cards_code_runs_against_their_repos(tiny_pipeline, hf_cache, modules_cache, monkeypatch):
    with serve_repos({repo: tiny_pipeline for repo in READY.values()}) as server:
        use_endpoint(monkeypatch, server.url)
        for name in READY:
            for namespace in run_python_blocks((CARDS / name).read_text()):
                assert type(namespace["pipe"]) is BRICSPipeline
                assert len(namespace["images"]) == 4 and namespace["images"][0].size == (32, 32)
    assert not server.unknown, server.unknown
