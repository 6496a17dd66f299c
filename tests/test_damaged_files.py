"""A missing, truncated or corrupt config, weights or checkpoint file gives one clear error that names the file."""

import json
import os
import shutil

import pytest
import torch
from builders import plain_unet

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.training.checkpointing import first_unreadable_file

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "model"
    BRICSAutoencoder.from_preset("tiny").save_pretrained(folder)
    return folder


def damaged(saved, tmp_path, change):
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    change(folder)
    return folder


@pytest.mark.parametrize(
    "change, error, names",
    [
        (lambda d: open(d / WEIGHTS, "r+b").truncate(1000), OSError, WEIGHTS),
        (lambda d: (d / WEIGHTS).write_bytes(b"\0" * 100), OSError, WEIGHTS),
        (lambda d: (d / WEIGHTS).unlink(), FileNotFoundError, "no weights"),
        (lambda d: open(d / "config.json", "r+").truncate(50), OSError, "config.json"),
        (lambda d: (d / "config.json").unlink(), OSError, "config.json"),
        (lambda d: (d / "config.json").write_text("{}"), ValueError, "config.json"),
    ],
    ids=["truncated-weights", "garbage-weights", "no-weights", "truncated-config", "no-config", "empty-config"],
)
def test_damaged_model_files_are_named(saved, tmp_path, change, error, names):
    folder = damaged(saved, tmp_path, change)
    with pytest.raises(error, match=names):
        BRICSAutoencoder.from_pretrained(folder)


def test_a_pipeline_with_damaged_autoencoder_weights_names_the_file(saved, tmp_path):
    unet = plain_unet(2, block_out_channels=(8, 8), norm_num_groups=8)
    pipe = BRICSPipeline(unet=unet, scheduler=default_scheduler(), vae=BRICSAutoencoder.from_pretrained(saved))
    pipe.save_pretrained(tmp_path / "pipe")
    open(tmp_path / "pipe" / "vae" / WEIGHTS, "r+b").truncate(500)
    with pytest.raises(OSError, match=os.path.join("vae", WEIGHTS)):
        BRICSPipeline.from_pretrained(tmp_path / "pipe")


def test_the_unreadable_file_of_a_checkpoint_is_found(tmp_path):
    folder = tmp_path / "checkpoint-2"
    (folder / "autoencoder").mkdir(parents=True)
    torch.save({"step": 2}, folder / "optimizer.bin")
    (folder / "ema_state.json").write_text(json.dumps({"decay": 0.9}))
    BRICSAutoencoder.from_preset("tiny").save_pretrained(folder / "autoencoder")
    assert first_unreadable_file(folder) is None
    open(folder / "optimizer.bin", "r+b").truncate(10)
    path, error = first_unreadable_file(folder)
    assert path == str(folder / "optimizer.bin")
    (folder / "optimizer.bin").unlink()
    open(folder / "autoencoder" / WEIGHTS, "r+b").truncate(100)
    assert first_unreadable_file(folder)[0] == str(folder / "autoencoder" / WEIGHTS)
