"""The main job: stage 1, stage 2 and an evaluation in one command, on the embedded emoji by default. The command
line, and what each phase does and writes, is `brics quickstart` (`quickstart_args`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from .evaluate import evaluate_generation, image_batches, load_split
from .metrics import prepare_weights
from .metrics.inception import InceptionFeatures
from .pipelines import BRICSPipeline
from .pipelines.key_codes import decode_key_codes, encode_images, interpolate_key_codes
from .pipelines.loading import swap_scheduler
from .quickstart_args import build_parser, check_inputs

RESULT_FILES = ("reconstructions.png", "samples.png", "interpolation.png", "metrics.json")


def data_flags(args: argparse.Namespace) -> list[str]:
    """The data flags both trainings and the evaluation share."""
    flags = []
    if args.dataset_name:
        flags += ["--dataset_name", args.dataset_name]
    if args.train_data_dir:
        flags += ["--train_data_dir", args.train_data_dir]
    return flags + ["--seed", str(args.seed)]


def finished(run_dir: Path, steps: int, seconds: float | None) -> bool:
    """Whether a training in ``run_dir`` ended (its ``metrics.json``) with at least ``steps`` steps, or at its time
    limit while one is still asked for (``seconds``); a run that ended with fewer steps is resumed to train the rest."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return False
    ended = json.loads(path.read_text())
    return ended.get("step", 0) >= steps or (seconds is not None and bool(ended.get("time_limit_reached")))


def train(command: str, run_dir: Path, flags: list[str], finished: bool) -> float:
    """Run ``brics COMMAND`` into ``run_dir`` in a child process (a fresh Accelerator, and the trainings' own
    command line, as a user would run it), resuming an interrupted or shorter run; returns the seconds it took
    (0 when ``finished``). Its output ends with ``saved to PATH``, the training's own last line, or this one's."""
    if finished:
        print(f"[quickstart] {command}: reusing the run saved to {run_dir}", flush=True)
        return 0.0
    resume = ["--resume_from_checkpoint", "latest"] if run_dir.is_dir() else []
    argv = [sys.executable, "-m", "diffusers_brics", command, "--output_dir", str(run_dir), *flags, *resume]
    print(f"[quickstart] {command}: {shlex.join(['brics', *argv[3:]])}", flush=True)
    start = time.monotonic()
    result = subprocess.run(argv)
    if result.returncode != 0:
        raise SystemExit(f"brics quickstart: brics {command} failed (exit {result.returncode}); its output is above. "
                         "Run the quickstart again to resume from the last checkpoint")
    return time.monotonic() - start


def budget_flags(steps: int, seconds: float | None) -> list[str]:
    """The length of a training: a step count, and a time limit where one is given."""
    return ["--max_train_steps", str(steps), *(["--max_train_seconds", f"{seconds:g}"] if seconds else [])]


def autoencoder_flags(args: argparse.Namespace) -> list[str]:
    """Stage 1: the preset with the recipe `brics train-ae` gives it (for the small presets: L2 alone, Adam with
    momentum, the grids' own faster rate; docs/training.md "Recipes"), validated once at the end."""
    return ["--preset", args.preset, *budget_flags(args.autoencoder_steps, args.autoencoder_seconds),
            "--validation_steps", str(args.autoencoder_steps), "--checkpointing_steps", "500",
            "--checkpoints_total_limit", "2", *data_flags(args), *shlex.split(args.autoencoder_args)]


def diffusion_flags(args: argparse.Namespace, autoencoder: Path) -> list[str]:
    """Stage 2: the UNet preset with `brics train-diffusion`'s recipe for it (the short-run recipe for the small
    UNets), on cached key codes and those of the mirror images, validated with the sampler's step count."""
    return ["--autoencoder", str(autoencoder), "--unet_preset", args.unet_preset,
            *budget_flags(args.diffusion_steps, args.diffusion_seconds), "--random_flip",
            "--validation_steps", str(args.diffusion_steps), "--checkpointing_steps", "500",
            "--checkpoints_total_limit", "2", "--num_inference_steps", str(args.num_inference_steps),
            *data_flags(args), *shlex.split(args.diffusion_args)]


@torch.no_grad()
def evaluate(args: argparse.Namespace, output: Path, pipeline: BRICSPipeline) -> dict:
    """Samples (grid, KID / FID), interpolations between held-out images; returns the metrics."""
    vae, resolution = pipeline.vae, pipeline.vae.config.sample_size
    swap_scheduler(pipeline, args.scheduler)
    held_out, column = load_split("held-out", resolution, dataset_name=args.dataset_name,
                                  train_data_dir=args.train_data_dir, seed=args.seed)

    baseline = None
    if args.real_baseline:  # the floor to read KID against: as many training images as samples, same reference
        train_split, train_column = load_split("train", resolution, dataset_name=args.dataset_name,
                                               train_data_dir=args.train_data_dir, seed=args.seed)
        train_split = train_split.shuffle(seed=args.seed).select(range(min(args.num_samples, len(train_split))))
        baseline = image_batches(train_split, train_column, resolution, 64, desc="training images (baseline)")
    torch.manual_seed(args.seed)  # KID's random subsets
    metrics, grid = evaluate_generation(
        pipeline, image_batches(held_out, column, resolution, 64, desc="held-out images (Inception)"),
        args.num_samples, 64, args.num_inference_steps, args.seed, baseline=baseline,
        inception=InceptionFeatures().to(args.device), num_grid_images=32)
    grid.save(output / "samples.png")

    # Interpolation: four pairs of held-out images, 8 steps each (ends included: the reconstructions).
    spread = held_out.select(sorted({round(i * (len(held_out) - 1) / 7) for i in range(8)}))  # across the set
    originals = next(image_batches(spread, column, resolution, 8, desc="interpolation"))
    codes = encode_images(vae, originals.to(pipeline.device))
    rows = [decode_key_codes(vae, interpolate_key_codes(codes[2 * i], codes[2 * i + 1], 8))
            for i in range(len(codes) // 2)]
    pictures = [picture for row in rows for picture in row]
    make_image_grid(pictures, rows=len(rows), cols=8).save(output / "interpolation.png")
    names = {"seconds_per_image": "sampling_seconds_per_image", "real_fid": "real_vs_real_fid",
             "real_kid_mean": "real_vs_real_kid_mean", "real_kid_std": "real_vs_real_kid_std"}
    return {**{names.get(k, k): v for k, v in metrics.items()}, "num_samples": args.num_samples,
            "scheduler": args.scheduler}


def export_pipeline(run_dir: Path, target: Path) -> BRICSPipeline:
    """Save the trained pipeline alone (no checkpoints, logs or cached key codes) with its card and samples."""
    pipeline = BRICSPipeline.from_pretrained(run_dir)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pipeline.save_pretrained(partial)
    for name in ("README.md", "samples.png"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, partial / name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return pipeline


def summary(metrics: dict, output: Path) -> str:
    """A few lines for the terminal."""
    lines = [
        f"[quickstart] done in {metrics['total_seconds']:.0f} s; results in {output}/",
        f"  autoencoder: {metrics['autoencoder_steps']} steps; held-out PSNR {metrics['psnr']:.2f} dB, "
        f"SSIM {metrics['ssim']:.3f}, LPIPS {metrics['lpips']:.3f}",
        f"  diffusion:   {metrics['diffusion_steps']} steps; KID x1e3 {metrics['kid_mean'] * 1e3:.1f}"
        + (f" (real vs real {metrics['real_vs_real_kid_mean'] * 1e3:.1f})" if "real_vs_real_kid_mean" in metrics else "")
        + f", FID {metrics['fid']:.1f}"
        + (f" (real vs real {metrics['real_vs_real_fid']:.1f})" if "real_vs_real_fid" in metrics else "")
        + f", {metrics['sampling_seconds_per_image']:.3f} s per sample",
        f"  images:      {', '.join(RESULT_FILES[:3])}",
        f"  pipeline:    BRICSPipeline.from_pretrained({str(output / 'pipeline')!r})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_inputs(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    output = Path(args.output_dir)
    runs = output / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    print("[quickstart] 1/4 weights", flush=True)
    prepare_weights(("lpips-alex", "inception"))
    weights_seconds = time.monotonic() - start

    ae_dir, diffusion_dir = runs / "autoencoder", runs / "diffusion"
    print("[quickstart] 2/4 autoencoder", flush=True)
    ae_seconds = train("train-ae", ae_dir, autoencoder_flags(args),
                       finished(ae_dir, args.autoencoder_steps, args.autoencoder_seconds))
    if ae_seconds and diffusion_dir.is_dir():  # a new autoencoder: its key codes are new, the UNet starts over
        shutil.rmtree(diffusion_dir)
    print("[quickstart] 3/4 diffusion", flush=True)
    diffusion_seconds = train("train-diffusion", diffusion_dir, diffusion_flags(args, ae_dir),
                              finished(diffusion_dir, args.diffusion_steps, args.diffusion_seconds))

    print("[quickstart] 4/4 evaluation", flush=True)
    if ae_seconds or diffusion_seconds:  # new models: the earlier results are not theirs
        (output / "metrics.json").unlink(missing_ok=True)
    metrics = None
    if all((output / name).is_file() for name in RESULT_FILES) and (output / "pipeline" / "model_index.json").is_file():
        metrics = json.loads((output / "metrics.json").read_text())
        if args.real_baseline and "real_vs_real_kid_mean" not in metrics:
            metrics = None  # the earlier evaluation left the floor out: evaluate again with it
        else:
            print(f"[quickstart] evaluation: reusing {output / 'metrics.json'}", flush=True)
    if metrics is None:
        evaluation_start = time.monotonic()
        pipeline = export_pipeline(diffusion_dir, output / "pipeline").to(args.device)
        pipeline.set_progress_bar_config(disable=True)
        shutil.copy2(ae_dir / "reconstructions.png", output / "reconstructions.png")
        stage1 = json.loads((ae_dir / "metrics.json").read_text())
        stage2 = json.loads((diffusion_dir / "metrics.json").read_text())
        metrics = {
            **{k: v for k, v in stage1.items() if k in ("psnr", "ssim", "lpips") or k.startswith("grid_usage")},
            **evaluate(args, output, pipeline),
            "autoencoder_steps": stage1["step"], "autoencoder_train_seconds": stage1["train_seconds"],
            "diffusion_steps": stage2["step"], "diffusion_train_seconds": stage2["train_seconds"],
        }
        metrics["phase_seconds"] = {"weights": weights_seconds, "autoencoder": ae_seconds,
                                    "diffusion": diffusion_seconds, "evaluation": time.monotonic() - evaluation_start}
        metrics["total_seconds"] = time.monotonic() - start
        partial = output / "metrics.json.partial"
        partial.write_text(json.dumps(metrics, indent=2))
        os.replace(partial, output / "metrics.json")
    print(summary(metrics, output), flush=True)
    print(f"[quickstart] saved to {output}", flush=True)
    return 0
