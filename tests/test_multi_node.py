"""Both trainings as two nodes of one process each on this machine (torch.distributed.run with a static rendezvous on
127.0.0.1 and a free port, gloo on the CPU), against one process of the whole batch: every node's log reports the
same weights digest (the trainer's end-of-training check), and the saved weights equal the one-process run's to float
tolerance. Stage 1 runs without its per-process random draws (relaxed-precision and decoder noise, the GAN), which
follow the process rather than the example (docs/scaling-out.md); stage 2 draws per example, so it matches with all
of its draws, and its key-code cache too."""

import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from builders import DIFFUSION_FAST, DIFFUSION_SCRIPT, ROOT, free_port
from safetensors.torch import load_file

from diffusers_brics import BRICSAutoencoder

AE_SCRIPT = ROOT / "examples" / "train_brics_ae.py"
DIGEST = re.compile(r"\[RANK (\d)\] \w+: weights identical on 2 process\(es\): sha256 ([0-9a-f]{16})")


def two_nodes(script: Path, args: list[str], timeout: int = 240) -> list[str]:
    """``script ARGS`` as two nodes of one process each, both launchers started at once; their logs, node 0 first."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    rendezvous = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = []
    for rank in range(2):
        command = [*launcher, "--node_rank", str(rank), *rendezvous, str(script), *args]
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    try:
        logs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for rank, (node, log) in enumerate(zip(nodes, logs)):
        assert node.returncode == 0, f"node {rank}:\n{log[-6000:]}"
    return logs


def one_process(script: Path, args: list[str]) -> None:
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]


def reported_digests(logs: list[str]) -> list[tuple[str, str]]:
    """``(rank, digest)`` of the end-of-training weights check in each node's log, in order of the nodes."""
    found = []
    for log in logs:
        matches = DIGEST.findall(log)
        assert len(matches) == 1, log[-3000:]
        found.append(matches[0])
    return found


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    one, two = load_file(a), load_file(b)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=atol, msg=key)


@pytest.mark.slow
def test_two_nodes_train_the_autoencoder_as_one_process_of_the_whole_batch(tmp_path, random_image_folder):
    config = tmp_path / "config"
    BRICSAutoencoder.from_preset("tiny", relaxed_precision=False, decoder_noise=False).save_config(config)
    # Adam's eps at 1e-8 rather than the release's 1e-15, which turns rounding-level gradient differences (the
    # all-reduce sums in another order) into whole steps of tiny gradients.
    common = ["--model_config_name_or_path", str(config), "--train_data_dir", str(random_image_folder(20)),
              "--validation_fraction", "0.2", "--training_recipe", "release", "--gan_weight", "0",
              "--perceptual_weight", "0", "--adam_epsilon", "1e-8", "--max_train_steps", "2",
              "--checkpointing_steps", "2", "--validation_steps", "100", "--eval_batch_size", "4",
              "--num_validation_images", "2", "--report_to", "none"]  # fmt: skip
    logs = two_nodes(AE_SCRIPT, [*common, "--train_batch_size", "4", "--output_dir", str(tmp_path / "nodes")])
    assert "2 steps of batch 4 x 2 processes x 1" in logs[0]
    (rank0, digest0), (rank1, digest1) = reported_digests(logs)
    assert (rank0, rank1) == ("0", "1") and digest0 == digest1
    one_process(AE_SCRIPT, [*common, "--train_batch_size", "8", "--output_dir", str(tmp_path / "one")])
    weights = Path("autoencoder", "diffusion_pytorch_model.safetensors")
    assert_same_weights(tmp_path / "one" / weights, tmp_path / "nodes" / weights)


@pytest.mark.slow
def test_two_nodes_train_the_unet_as_one_process_of_the_whole_batch(tmp_path, autoencoder, random_image_folder):
    common = [*DIFFUSION_FAST, "--autoencoder", str(autoencoder), "--train_data_dir", str(random_image_folder(16)),
              "--random_flip", "--max_train_steps", "2", "--checkpointing_steps", "2"]  # fmt: skip
    logs = two_nodes(DIFFUSION_SCRIPT, [*common, "--train_batch_size", "4", "--output_dir", str(tmp_path / "nodes")])
    assert "2 steps of batch 4 x 2 processes x 1" in logs[0]
    (rank0, digest0), (rank1, digest1) = reported_digests(logs)
    assert (rank0, rank1) == ("0", "1") and digest0 == digest1
    # one process of the whole batch, and one of half of it in two micro-batches: the same examples and draws
    one_process(DIFFUSION_SCRIPT, [*common, "--train_batch_size", "8", "--output_dir", str(tmp_path / "one")])
    one_process(DIFFUSION_SCRIPT, [*common, "--train_batch_size", "4", "--gradient_accumulation_steps", "2",
                                   "--output_dir", str(tmp_path / "accumulated")])  # fmt: skip
    codes = {run: datasets.load_from_disk(tmp_path / run / "key_codes").with_format("torch")["key_codes"]
             for run in ("nodes", "one")}  # fmt: skip
    assert len(codes["one"]) == 32  # 16 images and their mirror images
    torch.testing.assert_close(codes["nodes"], codes["one"], rtol=0, atol=0)
    # AdamW's first steps move each weight by about the learning rate (8e-4); rounding moves a few by 2e-5
    weights = Path("unet", "diffusion_pytorch_model.safetensors")
    assert_same_weights(tmp_path / "one" / weights, tmp_path / "nodes" / weights, atol=1e-4)
    assert_same_weights(tmp_path / "one" / weights, tmp_path / "accumulated" / weights, atol=1e-4)
