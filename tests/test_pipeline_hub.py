"""Loading pipelines by Hub repo id, online, from a Hub stand-in served on 127.0.0.1 (see hub_server.py): with
`BRICSPipeline.from_pretrained`, and with stock `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`
through the module files a saved BRICS pipeline carries.

The fixtures ``hf_cache`` and ``modules_cache`` (tests/conftest.py) and the helpers of hub_client.py patch
huggingface_hub's and diffusers' settings; ``monkeypatch`` undoes every change after each test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from builders import tiny_unet
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline
from hub_client import go_offline, use_endpoint
from hub_server import serve_repos
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from naive_pipeline import NaiveBRICSPipeline

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.pipelines.hub_files import files_to_download, module_file, package_exports, resolve_module_files

BRICS_REPO = "org/brics-tiny"
OLD_BRICS_REPO = "org/brics-tiny-old"  # as saved before the module files for trust_remote_code existed
DDPM_REPO = "org/ddpm-tiny"
NAIVE_REPO = "org/naive-tiny"
STEPS = 3


def generate(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(batch_size=2, generator=generator, num_inference_steps=STEPS, output_type="np").images


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """The three tiny pipelines saved to folders (and the BRICS one as older versions saved it), with the images the
    in-memory originals give."""
    root = tmp_path_factory.mktemp("pipelines")
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    brics = BRICSPipeline(unet=tiny_unet(2), scheduler=default_scheduler(), vae=vae)
    ddpm = DDPMPipeline(unet=tiny_unet(3), scheduler=DDPMScheduler(num_train_timesteps=100))
    naive = NaiveBRICSPipeline(unet=brics.unet, scheduler=brics.scheduler, vae=brics.vae)
    for name, pipe in (("brics", brics), ("ddpm", ddpm), ("naive", naive)):
        pipe.save_pretrained(root / name)
    brics.save_pretrained(root / "brics", variant="fp16")  # weights-only copies beside the plain ones
    # what else a training run's repo may hold: none of it is needed to load the pipeline
    (root / "brics" / "checkpoint-2").mkdir()
    (root / "brics" / "checkpoint-2" / "optimizer.bin").write_bytes(b"\0" * 1024)
    (root / "brics" / "samples.png").write_bytes(b"\0" * 16)
    old = root / "brics-old"
    shutil.copytree(root / "brics", old, ignore=shutil.ignore_patterns("*.py"))
    index = json.loads((old / "model_index.json").read_text())
    index.update(_class_name="BRICSPipeline", vae=["diffusers_brics.models.autoencoder_brics", "BRICSAutoencoder"])
    (old / "model_index.json").write_text(json.dumps(index))
    return {
        "folders": {BRICS_REPO: root / "brics", DDPM_REPO: root / "ddpm", NAIVE_REPO: root / "naive",
                    OLD_BRICS_REPO: old},
        "brics_images": generate(brics),
        "ddpm_images": generate(ddpm),
    }


@pytest.fixture
def hub(saved, hf_cache, monkeypatch):
    """The saved pipelines served as repos, with huggingface_hub pointed at them."""
    with serve_repos(saved["folders"]) as server:
        use_endpoint(monkeypatch, server.url)
        yield server
    assert not server.unknown, f"requests the stand-in does not implement: {server.unknown}"


def assert_same_images(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_stock_ddpm_pipeline_loads_from_the_stand_in(saved, hub, hf_cache):
    pipe = DDPMPipeline.from_pretrained(DDPM_REPO)

    assert (hf_cache / "models--org--ddpm-tiny" / "snapshots").is_dir()
    assert_same_images(generate(pipe), saved["ddpm_images"])
    # diffusers' own pipelines are saved as diffusers saves them: no module files, the class by name
    folder = saved["folders"][DDPM_REPO]
    assert not list(folder.rglob("*.py"))
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    patterns = hub.patterns()
    assert "GET /api/models/{repo_id}/revision/{revision}" in patterns
    assert "GET /{repo_id}/resolve/{revision}/{path}" in patterns


def test_pipeline_without_override_is_refused_by_repo_id(saved, hub):
    local = NaiveBRICSPipeline.from_pretrained(saved["folders"][NAIVE_REPO])  # fine from a folder
    assert isinstance(local.vae, BRICSAutoencoder)

    refused = r"does not exist in org/naive-tiny and is not a module in 'diffusers/pipelines'"
    with pytest.raises(ValueError, match=refused):
        NaiveBRICSPipeline.from_pretrained(NAIVE_REPO)
    assert "HEAD /{repo_id}/resolve/{revision}/{path}" in hub.patterns()  # model_index.json was fetched online


@pytest.mark.parametrize("revision", [None, "main"])
def test_brics_pipeline_loads_by_repo_id(saved, hub, hf_cache, revision):
    kwargs = {} if revision is None else {"revision": revision}
    pipe = BRICSPipeline.from_pretrained(BRICS_REPO, **kwargs)

    assert isinstance(pipe.vae, BRICSAutoencoder)
    assert pipe.name_or_path == BRICS_REPO  # the repo id, as diffusers records it
    assert (hf_cache / "models--org--brics-tiny" / "snapshots").is_dir()
    assert_same_images(generate(pipe), saved["brics_images"])
    patterns = hub.patterns()
    assert "GET /api/models/{repo_id}/revision/{revision}" in patterns
    assert "GET /api/models/{repo_id}/tree/{revision}" in patterns
    assert "GET /{repo_id}/resolve/{revision}/{path}" in patterns
    fetched = [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert {"unet", "vae", "scheduler"} <= {p.rsplit("/", 2)[-2] for p in fetched}
    assert not any("checkpoint-2" in p or "samples.png" in p for p in fetched), fetched


def test_brics_pipeline_loads_from_cache_offline_with_the_stand_in_stopped(saved, hub, hf_cache, monkeypatch):
    BRICSPipeline.from_pretrained(BRICS_REPO)  # populates the cache
    hub.stop()
    go_offline(monkeypatch)
    served = len(hub.requests)

    pipe = BRICSPipeline.from_pretrained(BRICS_REPO)

    assert not hub.running and len(hub.requests) == served
    assert_same_images(generate(pipe), saved["brics_images"])


def test_unknown_repo_raises_repository_not_found(hub):
    with pytest.raises(RepositoryNotFoundError):
        BRICSPipeline.from_pretrained("org/no-such-repo")


def test_unknown_file_and_revision_raise_hub_errors(hub):
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(BRICS_REPO, "vae/missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(BRICS_REPO, "model_index.json", revision="no-such-branch")


def test_files_to_download_pick_one_set_of_weights_per_component():
    files = ["model_index.json", "samples.png", "checkpoint-2/optimizer.bin", "scheduler/scheduler_config.json",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.fp16.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
             "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
             "vae/diffusion_pytorch_model.safetensors.index.json"]
    components = ["scheduler", "unet", "vae"]
    shards = [f for f in files if f.startswith("vae/")]
    assert sorted(files_to_download(files, components)) == sorted(
        ["scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", *shards])
    assert sorted(files_to_download(files, components, variant="fp16")) == sorted(
        ["scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
         *shards])  # the vae has no fp16 weights: its plain ones
    assert "unet/diffusion_pytorch_model.bin" in files_to_download(files, components, use_safetensors=False)
    assert "unet/diffusion_pytorch_model.safetensors" not in files_to_download(files, components, use_safetensors=False)


def test_module_files_know_what_the_package_root_exports():
    import diffusers_brics

    assert package_exports() == set(diffusers_brics.__all__)  # read from the root's source, without importing it
    for module, class_name, statement in (
        ("diffusers_brics.models.autoencoder_brics", "BRICSAutoencoder",
         "from diffusers_brics import BRICSAutoencoder"),
        ("diffusers_brics.models.decoder", "BRICSDecoder", "from diffusers_brics.models.decoder import BRICSDecoder"),
        ("naive_pipeline", "NaiveBRICSPipeline", "from naive_pipeline import NaiveBRICSPipeline"),
    ):
        stem, source = module_file(module, class_name)
        assert stem == module.rsplit(".", 1)[-1] and f"\n{statement}  # noqa: F401\n" in source
    index = {"_class_name": ["pipeline_brics", "BRICSPipeline"], "vae": ["autoencoder_brics", "BRICSAutoencoder"],
             "unet": ["diffusers", "UNet2DModel"], "other": ["some_module", "SomeClass"]}
    assert resolve_module_files(index) == {**index, "_class_name": "BRICSPipeline",
                                           "vae": [BRICSAutoencoder.__module__, "BRICSAutoencoder"]}
    old = {"_class_name": "BRICSPipeline", "vae": ["diffusers_brics.models.autoencoder_brics", "BRICSAutoencoder"]}
    assert resolve_module_files(old) == old


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_brics_pipeline_downloads_only_the_weights_it_loads(saved, hub, hf_cache, variant):
    pipe = BRICSPipeline.from_pretrained(BRICS_REPO, variant=variant)

    assert_same_images(generate(pipe), saved["brics_images"])
    fetched = [r.path.split("/resolve/", 1)[1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    weights = sorted(p.split("/", 1)[1] for p in fetched if p.endswith(".safetensors"))
    suffix = ".fp16.safetensors" if variant else ".safetensors"
    assert weights == [f"unet/diffusion_pytorch_model{suffix}", f"vae/diffusion_pytorch_model{suffix}"], fetched


def fetched_files(hub) -> list[str]:
    return [r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests
            if r.method == "GET" and "/resolve/" in r.path]


def test_a_saved_brics_pipeline_names_module_files_that_only_import_the_package(saved):
    folder = saved["folders"][BRICS_REPO]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_brics", "BRICSPipeline"]
    assert index["vae"] == ["autoencoder_brics", "BRICSAutoencoder"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for path, name in (("pipeline_brics.py", "BRICSPipeline"), ("vae/autoencoder_brics.py", "BRICSAutoencoder")):
        statements = [line for line in (folder / path).read_text().splitlines() if not line.startswith("#")]
        assert statements == [f"from diffusers_brics import {name}  # noqa: F401"]


def test_stock_diffusion_pipeline_loads_a_brics_repo_with_trust_remote_code(saved, hub, modules_cache):
    pipe = DiffusionPipeline.from_pretrained(BRICS_REPO, trust_remote_code=True)

    assert type(pipe) is BRICSPipeline and type(pipe.vae) is BRICSAutoencoder
    assert pipe.name_or_path == BRICS_REPO
    assert_same_images(generate(pipe), saved["brics_images"])
    fetched = fetched_files(hub)
    assert {"model_index.json", "pipeline_brics.py", "vae/autoencoder_brics.py"} <= set(fetched)
    assert not any("checkpoint-2" in p or "samples.png" in p for p in fetched), fetched
    assert (modules_cache / "diffusers_modules").is_dir()  # diffusers ran the module files from its own cache


def test_stock_diffusion_pipeline_without_trust_remote_code_is_refused(hub, modules_cache):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(BRICS_REPO)


def test_brics_pipeline_loads_its_saves_without_running_their_module_files(saved, modules_cache):
    folder = saved["folders"][BRICS_REPO]
    pipe = BRICSPipeline.from_pretrained(folder)

    assert type(pipe.vae) is BRICSAutoencoder and not modules_cache.exists()
    assert_same_images(generate(pipe), saved["brics_images"])
    # stock diffusers loads the folder too, given trust_remote_code
    generic = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert type(generic) is BRICSPipeline
    assert_same_images(generate(generic), saved["brics_images"])
    # a reloaded pipeline saves the same layout again
    pipe.save_pretrained(modules_cache.parent / "again")
    again = json.loads((modules_cache.parent / "again" / "model_index.json").read_text())
    assert again["_class_name"] == ["pipeline_brics", "BRICSPipeline"] and again["vae"][0] == "autoencoder_brics"


@pytest.mark.parametrize("by_repo_id", [False, True])
def test_pipelines_saved_before_the_module_files_still_load(saved, hub, by_repo_id):
    source = OLD_BRICS_REPO if by_repo_id else saved["folders"][OLD_BRICS_REPO]
    pipe = BRICSPipeline.from_pretrained(source)

    assert type(pipe.vae) is BRICSAutoencoder
    assert_same_images(generate(pipe), saved["brics_images"])


def test_stock_diffusers_loads_a_brics_repo_in_a_process_that_never_imported_the_package(saved, hub, tmp_path):
    code = "\n".join([
        "import sys",
        "from diffusers import DiffusionPipeline",
        "assert 'diffusers_brics' not in sys.modules",
        f"pipe = DiffusionPipeline.from_pretrained({BRICS_REPO!r}, trust_remote_code=True)",
        "print(type(pipe).__module__, type(pipe).__name__, type(pipe.vae).__name__)",
    ])
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"),
               HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["diffusers_brics.pipelines.pipeline_brics", "BRICSPipeline", "BRICSAutoencoder"]


def test_load_model_and_the_command_line_take_a_repo_id(saved, hub, tmp_path):
    from diffusers_brics import cli
    from diffusers_brics.pipelines.loading import load_model

    model = load_model(BRICS_REPO)
    assert isinstance(model.pipeline, BRICSPipeline) and model.vae is model.pipeline.vae
    assert load_model(DDPM_REPO).vae is None  # pixel space: a pipeline without autoencoder
    assert cli.main(["sample", "--model", BRICS_REPO, "--num_images", "2", "--num_inference_steps", "2",
                     "--output_dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("sample_*.png"))) == 2
    with pytest.raises(FileNotFoundError, match="no Hub repo of that name"):
        load_model("org/missing")


def test_load_model_offline_without_a_cached_copy_says_so(hub, monkeypatch):
    from diffusers_brics.pipelines.loading import load_model

    go_offline(monkeypatch)
    with pytest.raises(FileNotFoundError, match="cannot be reached"):
        load_model(BRICS_REPO)
