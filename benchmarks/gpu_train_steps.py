"""Stage-1 training steps per second: BRICS ``paper-64x64x4`` against diffusers' AutoencoderKL in Stable Diffusion's
layout, eager and with ``torch.compile``.

Each step is the stage-1 step of ``examples/train_brics_ae.py`` without its perceptual term (the VGG16 / LPIPS weights
are a download, and the GPU check runs without a network): ``20 * L2`` plus the non-saturating GAN loss through the
package's StyleGAN2 discriminator (frozen for the autoencoder's update), plus for AutoencoderKL its KL term (weight
1e-6, summed, as LDM), and Adam (betas 0, 0.99); then the discriminator's update (logistic loss, lazy R1 every 16
steps, Adam adjusted as StyleGAN2 does). The autoencoder's forward runs under bf16 autocast (``--precision``), the
discriminator in float32, as ``--mixed_precision bf16`` trains. "compiled" compiles the autoencoder's training
forward (``fullgraph=True``) as ``--torch_compile`` does; the discriminator and the losses stay eager.

Reported per model and mode: images per second over ``--steps`` steps after ``--warmup`` (the first compiles), the
median step time, the peak of ``torch.cuda.max_memory_allocated`` over the timed steps (None on a CPU), the first
step's time and the compile time (first step minus the median one); and the BRICS / AutoencoderKL ratios. With
``--output`` the JSON is rewritten after each run, so that a run cut short leaves the ones it finished.

    python benchmarks/gpu_train_steps.py --output gpu_check_out/train_steps.json        # 256x256, batch 8, CUDA
    python benchmarks/gpu_train_steps.py --device cpu --tiny    # seconds: tiny presets, dynamo's eager backend
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.models import MultiResolutionFeatureGrid, adapters
from diffusers_brics.training.discriminator import StyleGAN2Discriminator
from diffusers_brics.training.losses import (
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    kl_loss,
    r1_penalty,
)

# (label, model type, preset): the paper's BRICS layout and Stable Diffusion's VAE, both on 256x256 images.
MODELS = [("BRICS paper-64x64x4", "brics", "paper-64x64x4"), ("AutoencoderKL (SD layout)", "autoencoderkl", "sd")]
TINY_MODELS = [("BRICS tiny", "brics", "tiny"), ("AutoencoderKL tiny", "autoencoderkl", "tiny")]
# The stage-1 defaults of examples/train_brics_ae.py.
L2_WEIGHT, GAN_WEIGHT, KL_WEIGHT, R1_GAMMA, R1_INTERVAL, LEARNING_RATE = 20.0, 1.0, 1e-6, 4.0, 16, 2e-3


def build(kind: str, preset: str, device: torch.device, grid_backend: str | None) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "brics":
        model = BRICSAutoencoder.from_preset(preset, **({"grid_backend": grid_backend} if grid_backend else {}))
    else:
        model = adapters.build_autoencoder(kind, preset)
    return model.to(device).train()


def training_forward(model: torch.nn.Module, bf16: bool):
    """``images -> (reconstruction, KL term or None)``: the autoencoder's part of a training step (the part
    ``--torch_compile`` compiles), under bf16 autocast if ``bf16``."""
    brics = isinstance(model, BRICSAutoencoder)

    def forward(images):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            if brics:
                out = model(images, sample_posterior=True, relaxed_precision=model.config.relaxed_precision,
                            noise_mode="random")
                return out.sample, None
            posterior = model.encode(images).latent_dist
            return model.decode(posterior.sample()).sample, kl_loss(posterior, "sum")

    return forward


class TrainStep:
    """The autoencoder's and the discriminator's updates of one stage-1 step (without the perceptual term)."""

    def __init__(self, model, resolution: int, device: torch.device, bf16: bool, compile_kwargs: dict | None):
        self.model = model
        large = resolution >= 256
        self.disc = StyleGAN2Discriminator(resolution=resolution, channel_base=32768 if large else 64 * resolution,
                                           channel_max=512 if large else 256).to(device)
        lazy = R1_INTERVAL / (R1_INTERVAL + 1)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.0, 0.99), eps=1e-15)
        self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=LEARNING_RATE * lazy,
                                               betas=(0.0, 0.99**lazy), eps=1e-8)
        self.forward = training_forward(model, bf16)
        if compile_kwargs is not None:
            self.forward = torch.compile(self.forward, **compile_kwargs)

    def __call__(self, images: torch.Tensor, index: int) -> None:
        recon, kl = self.forward(images)
        loss = L2_WEIGHT * F.mse_loss(recon.float(), images)
        self.disc.requires_grad_(False)
        loss = loss + GAN_WEIGHT * generator_adversarial_loss(self.disc(recon.float()), "r1")
        self.disc.requires_grad_(True)
        if kl is not None:
            loss = loss + KL_WEIGHT * kl
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        fake = recon.detach().float()
        if index % R1_INTERVAL == 0:
            penalty, real_logits = r1_penalty(self.disc, images)
            penalty_term = R1_GAMMA / 2 * penalty * R1_INTERVAL
        else:
            real_logits, penalty_term = self.disc(images), 0.0
        d_loss = discriminator_adversarial_loss(real_logits, self.disc(fake), "r1")
        (d_loss + penalty_term).backward()
        self.disc_optimizer.step()
        self.disc_optimizer.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(label, kind, preset, mode, args, device) -> dict:
    """One model in one mode: warm-up steps (the first compiles), then ``args.steps`` timed steps."""
    row = {"model": label, "preset": preset, "mode": mode}
    model = step = None
    try:
        model = build(kind, preset, device, args.grid_backend)
        resolution = model.config.sample_size
        row.update(resolution=resolution, batch_size=args.batch_size,
                   parameters_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 3))
        grids = sorted({m.backend for m in model.modules() if isinstance(m, MultiResolutionFeatureGrid)})
        if grids:
            row["grid_backend"] = ",".join(grids)
        compile_kwargs = None
        if mode == "compiled":
            compile_kwargs = dict(backend=args.compile_backend, fullgraph=True)
            if args.compile_backend == "inductor":
                compile_kwargs["mode"] = args.compile_mode
        step = TrainStep(model, resolution, device, args.precision == "bf16", compile_kwargs)
        generator = torch.Generator().manual_seed(0)
        images = (torch.rand(args.batch_size, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
        times = []
        for index in range(args.warmup + args.steps):
            if index == args.warmup and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            start = time.perf_counter()
            step(images, index)
            synchronize(device)
            times.append(time.perf_counter() - start)
        timed = times[args.warmup:]
        median = statistics.median(timed)
        row.update(images_per_s=round(args.batch_size * len(timed) / sum(timed), 2),
                   step_ms_median=round(median * 1e3, 2), first_step_s=round(times[0], 3))
        row["compile_s"] = round(times[0] - median, 3) if mode == "compiled" else None
        row["peak_memory_MiB"] = (round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda"
                                  else None)
    except Exception as error:  # an OOM or a compile failure: reported, the other runs go on
        row["error"] = f"{type(error).__name__}: {error}"[:2000]
        traceback.print_exc()
    finally:
        del model, step
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def markdown(results: dict) -> str:
    lines = ["| model | mode | images/s | step (ms) | peak memory (MiB) | compile (s) |", "|---|---|---|---|---|---|"]
    for row in results["results"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['mode']} | error: {row['error'].splitlines()[0][:80]} | | | |")
            continue
        lines.append(f"| {row['model']} | {row['mode']} | {row['images_per_s']} | {row['step_ms_median']} | "
                     f"{row['peak_memory_MiB']} | {row['compile_s'] if row['compile_s'] is not None else '-'} |")
    for mode, ratio in results["brics_over_autoencoderkl"].items():
        lines.append(f"\nBRICS / AutoencoderKL, {mode}: " + ", ".join(f"{k} {v}" for k, v in ratio.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny presets at 32x32, batch 2, 1 + 2 steps (tests)")
    parser.add_argument("--batch_size", type=int, help="images per step (default 8; --tiny 2)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20; --tiny 2)")
    parser.add_argument("--warmup", type=int,
                        help="untimed steps before them, the first compiles (default 5; --tiny 1)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="the autoencoder's autocast")
    parser.add_argument("--modes", default="eager,compiled", help="comma-separated: eager, compiled")
    parser.add_argument("--compile_backend",
                        help="torch.compile backend (default: inductor; with --tiny on a CPU eager, which only traces)")
    parser.add_argument("--compile_mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode (inductor only)")
    parser.add_argument("--grid_backend", help="BRICS feature-grid backend (default: the model's own, auto)")
    parser.add_argument("--output", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    args.batch_size = args.batch_size or (2 if args.tiny else 8)
    args.steps = args.steps or (2 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step compiles)")
    device = torch.device(args.device)
    args.compile_backend = args.compile_backend or ("eager" if args.tiny and device.type == "cpu" else "inductor")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"eager", "compiled"}:
        parser.error(f"--modes: eager and/or compiled, got {args.modes!r}")

    setup = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
             "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "precision": args.precision,
             "compile": {"backend": args.compile_backend, "mode": args.compile_mode, "fullgraph": True},
             "loss": "20 * L2 + non-saturating GAN (StyleGAN2 discriminator, lazy R1 every 16 steps) + KL 1e-6 "
                     "(AutoencoderKL); no perceptual term (its VGG16/LPIPS weights are a download)"}
    if device.type == "cuda":
        setup["gpu"] = torch.cuda.get_device_name(device)
    try:
        import triton

        setup["triton"] = triton.__version__
    except ImportError:
        pass
    results = {"command": "python benchmarks/gpu_train_steps.py " + shlex.join(sys.argv[1:] if argv is None else argv),
               "setup": setup, "results": []}
    output = Path(args.output) if args.output else None
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    for mode in modes:  # both models eager first: a time limit cuts the compiled runs
        for label, kind, preset in TINY_MODELS if args.tiny else MODELS:
            row = measure(label, kind, preset, mode, args, device)
            results["results"].append(row)
            print(json.dumps(row), flush=True)
            if output is not None:  # after each run: a time limit leaves the runs done so far
                output.write_text(json.dumps(results, indent=2) + "\n")
    results["brics_over_autoencoderkl"] = {}
    for mode in modes:
        brics, kl = (next((r for r in results["results"] if r["mode"] == mode and r["model"] == label), {})
                     for label, _, _ in (TINY_MODELS if args.tiny else MODELS))
        ratio = {}
        if brics.get("images_per_s") and kl.get("images_per_s"):
            ratio["images_per_s"] = round(brics["images_per_s"] / kl["images_per_s"], 3)
        if brics.get("peak_memory_MiB") and kl.get("peak_memory_MiB"):
            ratio["peak_memory"] = round(brics["peak_memory_MiB"] / kl["peak_memory_MiB"], 3)
        results["brics_over_autoencoderkl"][mode] = ratio
    print(markdown(results))
    if output is not None:
        output.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(1 if any("error" in row for row in results["results"]) else 0)
