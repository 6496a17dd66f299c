"""What several test modules build: tiny UNets and pipelines, folders of random images; what they run in this process
(a training's ``main`` with a fresh accelerate state, a text-to-image pipeline on prompts) and in a child process (the
`brics` command, the stage-2 training script); the repository root, a free port, and a seeded benchmark's runs as a
clone has them. Each name here is defined once in the test suite: `tests/test_layout.py` fails on a function or
constant that two test modules define."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import BRICSTextToImagePipeline, default_scheduler

ROOT = Path(__file__).resolve().parents[1]

# the captions `tiny_text_pipeline` trains its tokenizer on
CAPTIONS = ["a red circle", "a blue square on white", "a green triangle", "a smiling yellow face"]


def tiny_unet(
    in_channels: int = 2,
    out_channels: int | None = None,
    sample_size: int | tuple[int, int] | list[int] | None = 8,
    num_class_embeds: int | None = None,
    seed: int | None = None,
) -> UNet2DModel:
    """A tiny UNet2DModel with attention in its second level (widths 8 and 16, one layer per block), of
    ``in_channels`` (and ``out_channels``, by default the same); ``seed``: `torch.manual_seed` first."""
    if seed is not None:
        torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
        num_class_embeds=num_class_embeds,
    )


def plain_unet(
    channels: int = 2,
    sample_size: int = 8,
    block_out_channels: tuple[int, int] = (8, 16),
    norm_num_groups: int = 4,
) -> UNet2DModel:
    """A tiny UNet2DModel without attention: two `DownBlock2D` and two `UpBlock2D`, one layer per block."""
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=norm_num_groups,
    )


def tiny_pipeline(vae: BRICSAutoencoder | None = None) -> BRICSPipeline:
    """An untrained pipeline of ``vae`` (by default the tiny autoencoder, 8x8x2 key codes, built after
    ``torch.manual_seed(0)``) and `tiny_unet` of its channels (built after ``torch.manual_seed(0)``), progress bar
    off."""
    if vae is None:
        torch.manual_seed(0)
        vae = BRICSAutoencoder.from_preset("tiny").eval()
    pipeline = BRICSPipeline(unet=tiny_unet(vae.latent_shape[0], seed=0), scheduler=default_scheduler(), vae=vae)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_text_pipeline(
    vae: BRICSAutoencoder, captions: Sequence[str] = CAPTIONS, vocab_size: int = 64
) -> BRICSTextToImagePipeline:
    """An untrained text-to-image pipeline on ``vae``: a BPE tokenizer of ``captions`` (``vocab_size`` entries), a
    tiny CLIP text encoder (width 32, eval mode) and a tiny cross-attention UNet (needs transformers and
    tokenizers)."""
    from diffusers_brics.models.text_encoder import build_text_encoder, train_caption_tokenizer

    channels, size, _ = vae.latent_shape
    tokenizer = train_caption_tokenizer(list(captions), vocab_size=vocab_size)
    unet = UNet2DConditionModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    return BRICSTextToImagePipeline(
        vae=vae,
        text_encoder=build_text_encoder(tokenizer, "tiny").eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=default_scheduler(),
    )


def tiny_class_pipeline(vae: BRICSAutoencoder) -> BRICSPipeline:
    """An untrained class-conditional pipeline on ``vae``: classes "cat" (0) and "dog" (1), and the null class 2."""
    unet = UNet2DModel.from_config(tiny_unet(vae.latent_shape[0]).config, num_class_embeds=3)
    return BRICSPipeline(
        unet=unet, scheduler=default_scheduler(), vae=vae, id2label={0: "cat", 1: "dog"}, null_class_id=2
    )


def random_images(folder: Path, count: int, height: int = 32, width: int = 32) -> Path:
    """``count`` random RGB PNGs ``0.png``, ``1.png``, ... of ``height`` x ``width`` in ``folder`` (created), drawn
    from a generator seeded with 0; returns ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = (torch.rand(height, width, 3, generator=generator) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def generate_from_prompts(pipe, prompts: Sequence[str], **kwargs):
    """``pipe(prompts)``: 3 steps from ``torch.Generator().manual_seed(0)``, as ``(B, H, W, 3)`` arrays, progress bar
    off; ``kwargs`` go to the pipeline (``guidance_scale=...``)."""
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        list(prompts), num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs
    ).images


def run_in_process(main: Callable[[list[str]], int | None], argv: Sequence, prog: str) -> int:
    """``main(argv)`` as its script runs it (`run_command`: an error is one line on stderr), in this process with a
    fresh accelerate state, as a new process has; its exit status."""
    from accelerate.state import AcceleratorState

    from diffusers_brics.console import run_command

    AcceleratorState._reset_state(reset_partial_state=True)
    return run_command(main, [str(arg) for arg in argv], prog=prog)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def brics(*args) -> subprocess.CompletedProcess:
    """``python -m diffusers_brics ARGS`` in a child process (one thread, offline)."""
    return subprocess.run(
        [sys.executable, "-m", "diffusers_brics", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )


DIFFUSION_SCRIPT = ROOT / "examples" / "train_brics_diffusion.py"
# a tiny UNet, a few images per step, no validation
DIFFUSION_FAST = [
    "--unet_preset", "tiny", "--train_batch_size", "16", "--lr_warmup_steps", "1", "--num_inference_steps", "4",
    "--num_validation_images", "2", "--report_to", "none", "--validation_steps", "100",
]  # fmt: skip


def run_diffusion(args, timeout=300, expect_success=True, env=None) -> str:
    """The stage-2 script with `DIFFUSION_FAST` and ``args`` in a child process (one thread); asserts that it
    succeeds (or, with ``expect_success=False``, that it fails); returns its stdout and stderr."""
    result = subprocess.run(
        [sys.executable, str(DIFFUSION_SCRIPT), *DIFFUSION_FAST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert (result.returncode == 0) == expect_success, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout + result.stderr


def as_cloned(output: Path) -> None:
    """Leaves in ``output/runs`` (a seeded benchmark's runs) only what a clone of the repository has of them: deletes
    each file that the repository's .gitignore ignores where the output would sit, ``benchmarks/results/<name>``,
    and the folders left empty."""
    files = {f"benchmarks/results/{output.name}/{path.relative_to(output).as_posix()}": path
             for path in (output / "runs").rglob("*") if path.is_file()}  # fmt: skip
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(files), cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert ignored.returncode in (0, 1), ignored.stderr  # 1: none ignored
    for name in ignored.stdout.splitlines():
        files[name].unlink()
    for folder in sorted((output / "runs").rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
