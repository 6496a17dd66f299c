"""``--push_to_hub``: the repository is created before training (a refusal stops the run at once), and the upload
holds the model, its card, metrics and samples only (no checkpoints, logs, caches, nor any local path). The full
runs push stage 1, then stage 2 on the pushed autoencoder, and pixel-space stage 2 to a fake Hub; the uploaded
repos are then served by the Hub stand-in, where the cards' code runs as written."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from builders import random_images, tiny_unet
from diffusers import DDPMPipeline
from hub_client import isolate_hub, load_valid_card, run_python_blocks, use_endpoint
from hub_server import serve_repos
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.training import autoencoder, diffusion, hub
from diffusers_brics.training.config import LoopConfig
from diffusers_brics.training.loop import Trainer, TrainingStage

# under pytest-xdist, the module's tests run on one worker: `pushed` (three trainings) is built once
pytestmark = pytest.mark.xdist_group("hub_push")

AE_FLAGS = ["--preset", "tiny", "--train_batch_size", "4", "--eval_batch_size", "32", "--max_eval_images", "32",
            "--num_validation_images", "4", "--report_to", "none", "--perceptual_resolution", "0", "--gan_weight", "0",
            "--max_train_steps", "2", "--checkpointing_steps", "2", "--validation_steps", "100"]
LDM_FLAGS = ["--unet_preset", "tiny", "--train_batch_size", "4", "--lr_warmup_steps", "1", "--num_inference_steps", "4",
             "--num_validation_images", "2", "--validation_steps", "100", "--max_train_steps", "2",
             "--checkpointing_steps", "2"]


class FakeHub:
    """``create_repo`` and ``upload_folder`` stand-ins: repos are folders under ``root``, and an upload copies the
    files ``upload_folder`` would send (its own filtering of ``allow_patterns``, and its default ignores)."""

    def __init__(self, root: Path, namespace: str = "user"):
        self.root, self.namespace = root, namespace
        self.calls: list[tuple[str, str]] = []

    def create(self, repo_id: str, **kwargs) -> types.SimpleNamespace:
        self.calls.append(("create", repo_id))
        full = repo_id if "/" in repo_id else f"{self.namespace}/{repo_id}"
        (self.root / full).mkdir(parents=True, exist_ok=True)
        return types.SimpleNamespace(repo_id=full)

    def upload(self, *, repo_id: str, folder_path: str, allow_patterns: list[str], **kwargs) -> None:
        self.calls.append(("upload", repo_id))
        folder = Path(folder_path)
        paths = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
        ignore = [".git", ".git/*", "*/.git", "**/.git/**", ".cache/huggingface", ".cache/huggingface/*"]
        for path in filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore):
            (self.root / repo_id / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / path, self.root / repo_id / path)

    def files(self, repo_id: str) -> set[str]:
        return {p.relative_to(self.root / repo_id).as_posix() for p in (self.root / repo_id).glob("**/*") if p.is_file()}


def train_here(main, argv: list[str]) -> None:
    """One training run in this process, with a fresh accelerate state."""
    AcceleratorState._reset_state(reset_partial_state=True)
    main(argv)


# ---------------------------------------------------------------------------------------------- the repository
def test_the_repo_id_defaults_to_the_output_folders_name(tmp_path):
    assert hub.default_repo_id(str(tmp_path / "runs" / "brics-emoji"), None) == "brics-emoji"
    assert hub.default_repo_id(str(tmp_path / "runs" / "brics-emoji") + "/", None) == "brics-emoji"
    assert hub.default_repo_id("whatever", "org/name") == "org/name"


@pytest.fixture
def refusing_hub(tmp_path, hf_cache, monkeypatch):
    """huggingface_hub pointed at the read-only Hub stand-in, which refuses to create repositories (405)."""
    (tmp_path / "empty").mkdir()
    with serve_repos({"org/other": tmp_path / "empty"}) as server:
        use_endpoint(monkeypatch, server.url)
        yield server
    assert [request.split("?")[0] for request in server.unknown] == ["POST /api/repos/create"]


def test_a_refused_repository_names_the_flags_to_check(refusing_hub):
    with pytest.raises(hub.HubRepositoryError, match=r"'org/x' \(HfHubHTTPError: .*--hub_token.*--hub_model_id"):
        hub.create_repository("org/x", token="hf_bad")


class Stop(Exception):
    """Raised by the stand-in stage: the test has what it needs."""


class RecordingStage(TrainingStage):
    def __init__(self, events: list):
        self.events = events

    def setup(self, trainer):
        self.events.append(("setup", trainer.config.hub_model_id))
        raise Stop


@pytest.mark.parametrize("hub_model_id, created, recorded", [
    (None, "brics-run", "user/brics-run"),  # the output folder's name, in the token's namespace
    ("org/brics", "org/brics", "org/brics"),
])
def test_the_repository_is_created_before_the_stage_sets_up(tmp_path, monkeypatch, hub_model_id, created, recorded):
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "create_repo", fake.create)
    events = fake.calls
    config = LoopConfig(output_dir=str(tmp_path / "brics-run"), report_to="none", cpu=True, push_to_hub=True,
                        hub_model_id=hub_model_id)
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(Stop):
        Trainer(config, "test").fit(RecordingStage(events))
    assert events == [("create", created), ("setup", recorded)]  # the card and the upload use the full id


@pytest.mark.parametrize("stage", [autoencoder, diffusion])
def test_a_refused_repository_stops_the_scripts_before_any_training(tmp_path, refusing_hub, monkeypatch, stage):
    set_up = []
    stage_class = autoencoder.AutoencoderStage if stage is autoencoder else diffusion.DiffusionStage
    monkeypatch.setattr(stage_class, "setup", lambda self, trainer: set_up.append(True))
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--report_to", "none", "--push_to_hub", "--hub_model_id", "org/x",
            "--hub_token", "hf_bad"]
    with pytest.raises(hub.HubRepositoryError, match=r"cannot create the Hub repository 'org/x' \(HfHubHTTPError"):
        train_here(stage.main, argv + (["--autoencoder", "none"] if stage is diffusion else []))
    assert not set_up and not list(out.glob("checkpoint-*"))


def test_push_to_hub_uploads_the_published_files_only(tmp_path):
    out = tmp_path / "brics-ldm"
    torch.manual_seed(0)
    BRICSPipeline(unet=tiny_unet(2), scheduler=default_scheduler(),
                  vae=BRICSAutoencoder.from_preset("tiny")).save_pretrained(out)
    for junk in ("key_codes/data-00000-of-00001.arrow", "key_codes/brics_key_code_cache.json",
                 "key_codes.partial/state.json", "checkpoint-2/optimizer.bin", "checkpoint-4.partial/unet/config.json",
                 "logs/train_brics_diffusion/events.out.tfevents", "notes.txt", "unet_backup/config.json"):
        (out / junk).parent.mkdir(parents=True, exist_ok=True)
        (out / junk).write_text(str(tmp_path))
    for name in ("README.md", "metrics.json", "samples.png"):
        (out / name).write_text("")
    fake = FakeHub(tmp_path / "hub")
    stage = diffusion.DiffusionStage(types.SimpleNamespace(loop=types.SimpleNamespace(output_dir=str(out))))

    hub.push_to_hub(str(out), "org/brics-ldm", stage.hub_files(), upload=fake.upload)

    assert fake.files("org/brics-ldm") == {
        "README.md", "metrics.json", "samples.png", "model_index.json", "pipeline_brics.py",
        "scheduler/scheduler_config.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/autoencoder_brics.py", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"}


# ---------------------------------------------------------------------------------------------- full runs
@pytest.fixture(scope="module")
def pushed(tmp_path_factory, lpips_weights_dir) -> dict:
    """Stage 1 pushed as org/brics-ae; stage 2 on it (loaded from the Hub stand-in) pushed as org/brics-ldm, with a
    tracker's logs; pixel-space stage 2 pushed under its output folder's name. Junk planted in the output folders
    (notes holding local paths) must stay there."""
    root = tmp_path_factory.mktemp("push")
    images = random_images(root / "images", 12)
    outputs = {name: root / "runs" / name for name in ("ae", "ldm", "pixels")}
    for out in outputs.values():
        out.mkdir(parents=True)
        (out / "notes.txt").write_text(f"trained from {images} on this machine")
    fake = FakeHub(root / "hub")
    with pytest.MonkeyPatch.context() as patch:
        isolate_hub(patch, root / "hf_home")
        patch.setattr(hub, "create_repo", fake.create)
        patch.setattr(hub, "upload_folder", fake.upload)
        train_here(autoencoder.main, AE_FLAGS + ["--train_data_dir", str(images), "--validation_fraction", "0.25",
                                          "--output_dir", str(outputs["ae"]), "--push_to_hub", "--hub_model_id",
                                          "org/brics-ae"])
        with serve_repos({"org/brics-ae": fake.root / "org/brics-ae"}) as server:
            use_endpoint(patch, server.url)
            train_here(diffusion.main, LDM_FLAGS + ["--autoencoder", "org/brics-ae", "--autoencoder_subfolder", "autoencoder",
                                             "--train_data_dir", str(images), "--output_dir", str(outputs["ldm"]),
                                             "--report_to", "tensorboard", "--push_to_hub", "--hub_model_id",
                                             "org/brics-ldm"])
        train_here(diffusion.main, LDM_FLAGS + ["--autoencoder", "none", "--train_data_dir", str(images), "--output_dir",
                                         str(outputs["pixels"]), "--report_to", "none", "--push_to_hub"])
    return {"hub": fake, "outputs": outputs, "root": root}


REPOS = {"ae": "org/brics-ae", "ldm": "org/brics-ldm", "pixels": "user/pixels"}


def test_each_run_creates_its_repository_then_uploads_once(pushed):
    assert pushed["hub"].calls == [("create", "org/brics-ae"), ("upload", "org/brics-ae"),
                                   ("create", "org/brics-ldm"), ("upload", "org/brics-ldm"),
                                   ("create", "pixels"), ("upload", "user/pixels")]


def test_the_uploads_hold_the_models_cards_metrics_and_samples_only(pushed):
    fake, outputs = pushed["hub"], pushed["outputs"]
    assert fake.files("org/brics-ae") == {"README.md", "metrics.json", "reconstructions.png",
                                          "autoencoder/config.json", "autoencoder/diffusion_pytorch_model.safetensors"}
    pipeline = {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors"}
    assert fake.files("org/brics-ldm") == {"README.md", "metrics.json", "samples.png", "pipeline_brics.py",
                                           "vae/autoencoder_brics.py", "vae/config.json",
                                           "vae/diffusion_pytorch_model.safetensors", *pipeline}
    assert fake.files("user/pixels") == {"README.md", "metrics.json", "samples.png", *pipeline}  # a stock DDPMPipeline
    # what stayed on the machine
    assert (outputs["ldm"] / "key_codes").is_dir() and (outputs["pixels"] / "key_codes").is_dir()
    assert list((outputs["ldm"] / "logs").glob("**/events.out.tfevents*"))
    assert all((out / "checkpoint-2").is_dir() and (out / "notes.txt").is_file() for out in outputs.values())


def test_no_uploaded_file_holds_a_local_path(pushed):
    local = [str(pushed["root"]), str(pushed["root"].resolve()), str(Path.home())]
    for repo in REPOS.values():
        for path in pushed["hub"].files(repo):
            try:
                text = (pushed["hub"].root / repo / path).read_text(encoding="utf-8")
            except UnicodeDecodeError:  # weights, pictures
                continue
            assert not any(folder in text for folder in local), f"{repo}/{path} holds a local path"
    vae = json.loads((pushed["hub"].root / "org/brics-ldm/vae/config.json").read_text())
    assert vae["_name_or_path"] == "org/brics-ae"  # where the autoencoder came from, as a Hub id


def test_the_cards_metadata(pushed):
    folder = pushed["hub"].root
    ae = load_valid_card(folder / "org/brics-ae/README.md", pipeline_tag=None)
    metrics = json.loads((folder / "org/brics-ae/metrics.json").read_text())
    assert {r.metric_type: r.metric_value for r in ae.data.eval_results} == {
        key: round(metrics[key], 4) for key in ("psnr", "ssim", "lpips")}
    assert {r.dataset_type for r in ae.data.eval_results} == {"imagefolder"}
    assert "brics" in ae.data.tags and ae.data.model_name == "brics-ae"
    ldm = load_valid_card(folder / "org/brics-ldm/README.md", pipeline_tag="unconditional-image-generation")
    assert ldm.data.base_model == "org/brics-ae" and ldm.data.eval_results is None
    pixels = load_valid_card(folder / "user/pixels/README.md", pipeline_tag="unconditional-image-generation")
    assert pixels.data.base_model is None and "DDPMPipeline" in pixels.text
    settings = ModelCard.load(folder / "org/brics-ldm/README.md").text
    assert "| `train_data_dir` | `images` |" in settings and "| `autoencoder` | `org/brics-ae` |" in settings


def test_the_cards_code_runs_against_the_uploaded_repos(pushed, hf_cache, modules_cache, monkeypatch):
    folder = pushed["hub"].root
    with serve_repos({repo: folder / repo for repo in REPOS.values()}) as server:
        use_endpoint(monkeypatch, server.url)
        (vae,) = run_python_blocks((folder / "org/brics-ae/README.md").read_text())
        assert type(vae["vae"]) is BRICSAutoencoder and vae["reconstructions"].shape == (1, 3, 32, 32)
        ways = run_python_blocks((folder / "org/brics-ldm/README.md").read_text())
        assert [type(way["pipe"]) for way in ways] == [BRICSPipeline, BRICSPipeline]  # this package, stock diffusers
        assert all(len(way["images"]) == 4 for way in ways)
        (pixels,) = run_python_blocks((folder / "user/pixels/README.md").read_text())
        assert type(pixels["pipe"]) is DDPMPipeline and len(pixels["images"]) == 4
    assert not server.unknown, server.unknown
