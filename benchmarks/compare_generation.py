"""Equal-budget generation: diffusion on BRICS key codes, on AutoencoderKL latents and on pixels (embedded 32x32 emoji).

Trains one UNet preset (``--unet_preset``, default ``small``) with ``examples/train_brics_diffusion.py``, with the
same steps, batch, learning rate and its schedule, noise schedule, EMA, random flips and seed, three times:

* on the key codes of the BRICS autoencoder in ``--brics`` (a stage-1 output folder; scaled onto ``[-1, 1]``);
* on the latents of the AutoencoderKL in ``--kl`` (the posterior's mode, scaled by a ``scaling_factor`` fitted to the
  training latents, ``1 / std``);
* on the images themselves (``--autoencoder none``: pixel-space diffusion, saved as a stock diffusers
  `DDPMPipeline`).

Both autoencoders come from ``compare_autoencoders.py`` (same data, steps and seed), which leaves them in
``benchmarks/results/compare_autoencoders/run/{brics,autoencoderkl}``. Then, with `diffusers_brics.evaluate`, for each
model: FID and KID of ``--num_samples`` samples against the whole held-out split, beside the real-vs-real baseline
(as many training images against the same held-out split: computed once for the three); the sampling time per image
with the same sampler for all three (DDIM, ``--num_inference_steps``, eta 0, no clipping of the predicted image); a
grid of samples; and for BRICS a few samples beside their nearest training images by LPIPS-alex (paper Figure 8).

Writes ``results.json``, ``report.md`` (the command at its top), ``samples_<model>.png``, ``kid.png`` and
``neighbours_brics.png`` into ``--output``; the trainings go to ``OUTPUT/run/<model>`` (git-ignored).

    python benchmarks/compare_generation.py --autoencoders benchmarks/results/compare_autoencoders/run
    python benchmarks/compare_generation.py --brics PATH --kl PATH --steps 300
    python benchmarks/compare_generation.py --tiny --no_fid --output /tmp/gen   # the test's smoke run

Arguments after ``--`` go to every training run. The default ``--steps`` (see `DEFAULT_STEPS`) makes the three
trainings take about 25 minutes together on 2 idle CPU cores, pixel diffusion being most of it; the evaluation adds
several minutes (sampling, the Inception features, and about 10-20 s of CPU per FID).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from diffusers_brics.pipelines.key_codes import to_pil
from diffusers_brics.pipelines.loading import load_pipeline
from diffusers_brics.evaluate import (
    InceptionDistances,
    image_batches,
    load_split,
    nearest_neighbours,
    sample_images,
    to_unit,
)
from diffusers_brics.metrics.inception import InceptionFeatures
from diffusers_brics.models import adapters
from diffusers_brics.training.unet import UNET_PRESETS

from benchmark_runs import ROOT, fresh_run_dir, run_shown, split_argv  # beside this script

SCRIPT = ROOT / "examples" / "train_brics_diffusion.py"
DEFAULT_AUTOENCODERS = ROOT / "benchmarks" / "results" / "compare_autoencoders" / "run"
# Training steps of each model by default, for about 25 minutes of the three trainings on 2 idle CPU cores (small
# UNet, batch 64). A few timed steps of each (forward, loss, backward, clipping, AdamW, EMA; one thread: CPU time
# 0.36 s per step on 8x8x4 latents, 4.0 s on 32x32 pixels, the two kinds of latents alike) and the 0.29 s per
# latent step of train_diffusion_benchmark.py's run on 2 threads put one step of the three at about 2.9 s on 2
# threads: 480 steps take about 23 minutes, plus about 2 for starting, caching the latents and the final samples.
DEFAULT_STEPS = 480
# model key (the folder in OUTPUT/run) -> its name in the report
NAMES = {"brics": "BRICS key codes", "autoencoderkl": "AutoencoderKL latents", "pixels": "pixels (DDPMPipeline)"}
GOAL = "BRICS generation KID no worse than the KL-latent model's"


def stage1_model(path: Path, model_type: str, flag: str):
    """The autoencoder of a stage-1 output folder (or a model folder), checked to be a ``model_type``."""
    if not (path / "config.json").is_file() and not (path / "autoencoder" / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} holds no trained autoencoder (neither config.json nor "
                                "autoencoder/config.json): run `python benchmarks/compare_autoencoders.py` first, or "
                                f"pass {flag} PATH")
    vae = adapters.load_autoencoder(str(path))
    if adapters.model_type_of(vae) != model_type:
        raise ValueError(f"{flag} {str(path)!r} holds a {type(vae).__name__}, not a "
                         f"{adapters.AUTOENCODER_CLASSES[model_type].__name__}")
    return vae


def train(name: str, autoencoder: str, run_dir: Path, args, extra: list[str], resolution: int) -> str:
    """Train one model with the stage-2 script; returns the command as shown."""
    command = [
        sys.executable, str(SCRIPT), "--autoencoder", autoencoder, "--output_dir", str(run_dir / name),
        "--unet_preset", args.unet_preset, "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--learning_rate", str(args.learning_rate),
        "--lr_warmup_steps", str(args.lr_warmup_steps), "--seed", str(args.seed), "--random_flip",
        "--validation_steps", "100000000", "--checkpointing_steps", "100000000",
        "--num_validation_images", "8", "--num_inference_steps", str(args.num_inference_steps), "--report_to", "none",
        *(["--resolution", str(resolution)] if autoencoder == "none" else []), *extra,
    ]
    shown = run_shown(command)
    (run_dir / name / "benchmark_command.txt").write_text(shown + "\n")
    return shown


def distances(reference: list[torch.Tensor], features: list[torch.Tensor], inception, with_fid: bool,
              seed: int, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID (unless ``with_fid`` is False) and KID between reference and other Inception features; KID's random
    subsets (of ``kid_subset_size``, capped at the smaller set) are drawn from ``seed``."""
    torch.manual_seed(seed)
    if with_fid:
        pair = InceptionDistances(inception, kid_subset_size)
        pair.features[True], pair.features[False] = reference, features
        return pair.compute()
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = torch.cat(reference), torch.cat(features)
    kid = KernelInceptionDistance(feature=torch.nn.Identity(), normalize=False,
                                  subset_size=min(kid_subset_size, len(real), len(fake)))  # as InceptionDistances
    kid.update(real, real=True)
    kid.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"kid_mean": float(kid_mean), "kid_std": float(kid_std), "real_images": len(real), "fake_images": len(fake)}


@torch.no_grad()
def features_of(inception, batches) -> list[torch.Tensor]:
    """Inception features of image batches in ``[-1, 1]``."""
    return [inception(to_unit(images)).double().cpu() for images in batches]


def grid(images: list[torch.Tensor], columns: int = 8):
    """Images ``(3, H, W)`` in ``[0, 1]`` as one grid of full rows."""
    columns = min(columns, len(images))
    rows = len(images) // columns
    return make_image_grid([to_pil(x * 2 - 1) for x in images[: rows * columns]], rows=rows, cols=columns)


def evaluate_model(name: str, folder: Path, reference: list[torch.Tensor], inception, args,
                   keep: int) -> tuple[dict, list[torch.Tensor]]:
    """Samples of one trained model (DDIM): FID / KID against the reference features, seconds per image, the
    latent shape and UNet size; returns them with the first ``keep`` samples (``[0, 1]``)."""
    pipeline = load_pipeline(str(folder), "ddim")
    unet = pipeline.unet.config
    features, kept, seconds = [], [], 0.0
    start = time.perf_counter()
    for images in sample_images(pipeline, args.num_samples, args.eval_batch_size, args.num_inference_steps, args.seed,
                                desc=f"sampling {name}"):
        seconds += time.perf_counter() - start
        features.append(inception(images).double().cpu())
        kept += list(images[: max(0, keep - len(kept))])
        start = time.perf_counter()
    trained = json.loads((folder / "metrics.json").read_text())
    row = {
        "pipeline": type(pipeline).__name__,
        "latent_shape": [unet.in_channels, unet.sample_size, unet.sample_size],
        "unet_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
        "steps": trained["step"], "train_seconds": trained["train_seconds"],
        "train_images_per_second": trained["train_images_per_second"],
        "seconds_per_image": seconds / args.num_samples,
        **distances(reference, features, inception, not args.no_fid, args.seed),
    }
    vae = getattr(pipeline, "vae", None)
    if vae is not None:
        row["scaling_factor"] = float(vae.config.scaling_factor)
    return row, kept


def goal(models: dict) -> tuple[bool, str] | None:
    """Whether BRICS's KID is no worse (not higher) than the KL-latent model's, and the figures."""
    brics, kl = models.get("brics"), models.get("autoencoderkl")
    if brics is None or kl is None:
        return None
    holds = brics["kid_mean"] <= kl["kid_mean"]
    difference = brics["kid_mean"] - kl["kid_mean"]
    spread = math.hypot(brics["kid_std"], kl["kid_std"])
    detail = (f"KID {1e3 * brics['kid_mean']:.2f} ± {1e3 * brics['kid_std']:.2f} (BRICS) vs "
              f"{1e3 * kl['kid_mean']:.2f} ± {1e3 * kl['kid_std']:.2f} (AutoencoderKL), x1e3; the difference, "
              f"{1e3 * difference:+.2f}, is {'within' if abs(difference) <= spread else 'beyond'} the subsets' "
              f"combined standard deviation ({1e3 * spread:.2f})")
    return holds, detail


def plot_kid(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    names = [NAMES[key] for key in results["models"]]
    rows = list(results["models"].values())
    baseline = results["baseline"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(names, [1e3 * r["kid_mean"] for r in rows], yerr=[1e3 * r["kid_std"] for r in rows], capsize=4,
           color=["tab:blue", "tab:orange", "tab:green"][: len(rows)])
    mean, std = 1e3 * baseline["kid_mean"], 1e3 * baseline["kid_std"]
    ax.axhline(mean, color="0.3", linestyle="--", label=f"real vs real ({baseline['fake_images']} training images)")
    ax.axhspan(mean - std, mean + std, color="0.85", zorder=0)
    ax.set_ylabel("KID x 1e3 (lower is better)")
    ax.set_title(f"{results['setup']['num_samples']} samples vs {baseline['real_images']} held-out images; "
                 f"{results['setup']['steps']} steps each", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(results: dict, has_plot: bool) -> str:
    setup, baseline = results["setup"], results["baseline"]
    fid = "fid" in baseline
    real = (f"{baseline['fid']:.1f} / " if fid else "") + f"{1e3 * baseline['kid_mean']:.2f} ± {1e3 * baseline['kid_std']:.2f}"
    lines = [
        "# Equal-budget generation: diffusion on BRICS key codes vs AutoencoderKL latents vs pixels", "",
        "```", results["command"], "```", "",
        (f"Embedded 32x32 emoji. One UNet preset (`{setup['unet_preset']}`) trained by "
         f"`examples/train_brics_diffusion.py` on each space with the same {setup['steps']} steps at batch "
         f"{setup['batch_size']}, learning rate {setup['learning_rate']:g} (cosine, {setup['lr_warmup_steps']} warm-up "
         f"steps), the Chen 2023 cosine-variant noise schedule, EMA, random flips and seed {setup['seed']}; EMA weights "
         f"evaluated. Stage-1 models: `{setup['brics']}` and `{setup['kl']}`. torch {setup['torch']}, "
         f"{setup['threads']} CPU thread(s)."
         + (f" Extra training arguments: `{' '.join(setup['train_args'])}`." if setup["train_args"] else "")), "",
        (f"{setup['num_samples']} samples per model (seeds {setup['seed']}..), all three sampled with DDIM, "
         f"{setup['num_inference_steps']} steps (eta 0, predicted images not clipped), batch "
         f"{setup['eval_batch_size']}; FID and KID (KID x1e3, mean ± std over KID's random subsets) against "
         f"{baseline['real_images']} held-out images on the standard FID Inception-v3 features. Real vs real: "
         f"{baseline['fake_images']} training images against the same held-out images (computed once)."
         + ("" if fid else " FID skipped (`--no_fid`).")), "",
        ("| model | latent shape | UNet params | train steps | train images/s | FID | KID (x1e3) | real-vs-real "
         f"{'FID / ' if fid else ''}KID | s/image |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results["models"].items():
        channels, height, width = row["latent_shape"]
        fid_cell = f"{row['fid']:.1f}" if fid else "-"
        lines.append(
            f"| {NAMES[key]} | {height}x{width}x{channels} | {row['unet_parameters'] / 1e6:.2f} M | {row['steps']} "
            f"| {row['train_images_per_second']:.1f} | {fid_cell} | {1e3 * row['kid_mean']:.2f} ± "
            f"{1e3 * row['kid_std']:.2f} | {real} | {row['seconds_per_image']:.3f} |")
    outcome = results.get("goal")
    if outcome is not None:
        verdict = "holds" if outcome["holds"] else "does not hold"
        lines += ["", (f"**{GOAL}: {verdict} at this budget** ({outcome['detail']}). One seed and one training "
                       "each: a difference within the subsets' spread is no clear difference.")]
    if has_plot:
        lines += ["", "![KID of each model, with the real-vs-real baseline](kid.png)"]
    lines += ["", "## Samples", "", "The first samples of each model (seeds in order):", ""]
    for key in results["models"]:
        lines += [f"{NAMES[key]}:", "", f"![{key} samples](samples_{key}.png)", ""]
    if results.get("neighbours"):
        lines += ["## Nearest training images of BRICS samples (paper Figure 8)", "",
                  (f"Each row: a BRICS sample, then its {results['neighbours']['k']} nearest training images by "
                   "LPIPS-alex, nearest first (distances in results.json). Near-copies would show memorisation."), "",
                  "![BRICS samples and their nearest training images](neighbours_brics.png)", ""]
    lines += ["## Training runs", ""]
    lines += [f"- {NAMES[key]}: {row['steps']} steps in {row['train_seconds']:.0f} s "
              + (f"(scaling_factor {row['scaling_factor']:.4g}) " if "scaling_factor" in row else "")
              + f"`{row['command']}`" for key, row in results["models"].items()]
    if setup["unet_preset_notes"]:
        lines += ["", setup["unet_preset_notes"]]
    return "\n".join(lines) + "\n"


def preset_notes(preset: str, latent_size: int, resolution: int) -> str:
    """A remark when the preset's attention blocks apply to latents but not to pixels."""
    attention = UNET_PRESETS[preset]["attention_resolutions"]
    levels = len(UNET_PRESETS[preset]["block_out_channels"])
    latent_levels = [latent_size // 2**level for level in range(levels)]
    pixel_levels = [resolution // 2**level for level in range(levels)]
    latent_attention = [s for s in latent_levels if s in attention] or "none"
    pixel_attention = [s for s in pixel_levels if s in attention] or "none"
    if latent_attention == pixel_attention:
        return ""
    return (f"Note: the `{preset}` preset puts attention where the features are {list(attention)} wide: the latent "
            f"UNets (feature sizes {latent_levels}) have it at {latent_attention}, the pixel UNet (feature sizes "
            f"{pixel_levels}) at {pixel_attention}; the pixel UNet's convolutions also run on "
            f"{(resolution // latent_size) ** 2} times as many positions.")


def main() -> None:
    argv, extra = split_argv([])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoders", default=str(DEFAULT_AUTOENCODERS),
                        help="the folder holding the stage-1 output folders brics/ and autoencoderkl/")
    parser.add_argument("--brics", help="the BRICS stage-1 output folder (default: AUTOENCODERS/brics)")
    parser.add_argument("--kl", help="the AutoencoderKL stage-1 output folder (default: AUTOENCODERS/autoencoderkl)")
    parser.add_argument("--unet_preset", default="small", choices=sorted(UNET_PRESETS))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"training steps of each model (default {DEFAULT_STEPS}: about 25 minutes for the three "
                             "on 2 idle cores)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=8e-4,
                        help="the paper's rate, as train_diffusion_benchmark.py (the script's default is 8e-5)")
    parser.add_argument("--lr_warmup_steps", type=int, default=None, help="default: a tenth of --steps")
    parser.add_argument("--seed", type=int, default=0, help="training seed, and the first sampling seed")
    parser.add_argument("--num_samples", type=int, default=500, help="samples per model for FID / KID")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps, for all three models")
    parser.add_argument("--eval_batch_size", type=int, default=50, help="samples per pipeline call")
    parser.add_argument("--max_reference_images", type=int, default=None,
                        help="the first N held-out images only (default: all)")
    parser.add_argument("--neighbour_samples", type=int, default=8, help="BRICS samples in the neighbour grid")
    parser.add_argument("--k", type=int, default=5, help="nearest training images per sample")
    parser.add_argument("--no_fid", action="store_true", help="KID only (FID's 2048x2048 eigenvalues take 10-20 s "
                        "of CPU per model)")
    parser.add_argument("--inception_weights", help="a prepared FID Inception weight file (see "
                        "diffusers_brics.metrics.inception)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the trainings and the evaluation (OMP_NUM_THREADS; default: PyTorch's); "
                             "on a machine shared with other jobs 1 thread can be several times faster than 2")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the models already in OUTPUT/run")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run: tiny UNets, 2 steps at batch 8, 4 samples of 2 steps, 8 held-out images")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "compare_generation"))
    args = parser.parse_args(argv)
    neighbour_pool = None
    if args.tiny:
        args.unet_preset, args.steps, args.batch_size = "tiny", 2, 8
        args.num_samples, args.num_inference_steps, args.eval_batch_size = 4, 2, 4
        args.max_reference_images, args.neighbour_samples, args.k = args.max_reference_images or 8, 2, 2
        neighbour_pool = 128  # training images searched for neighbours
    for name in ("steps", "batch_size", "num_samples", "num_inference_steps", "eval_batch_size", "neighbour_samples",
                 "k", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.num_samples < 2:
        parser.error("--num_samples must be >= 2 (FID and KID need two images per set)")
    args.lr_warmup_steps = args.steps // 10 if args.lr_warmup_steps is None else args.lr_warmup_steps
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training processes inherit it
        torch.set_num_threads(args.threads)
    autoencoders = Path(args.autoencoders)
    brics_path = Path(args.brics) if args.brics else autoencoders / "brics"
    kl_path = Path(args.kl) if args.kl else autoencoders / "autoencoderkl"
    command = shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    print(f"--steps {args.steps} for each of the three trainings"
          + (" (the default: about 25 minutes for the three on 2 idle cores)" if args.steps == DEFAULT_STEPS else ""),
          flush=True)

    brics_vae = stage1_model(brics_path, "brics", "--brics")
    kl_vae = stage1_model(kl_path, "autoencoderkl", "--kl")
    resolution = brics_vae.config.sample_size
    if kl_vae.config.sample_size != resolution:
        raise ValueError(f"the autoencoders work on different image sizes: {resolution} (BRICS) and "
                         f"{kl_vae.config.sample_size} (AutoencoderKL)")
    latent_size = adapters.latent_shape(brics_vae)[1]
    del brics_vae, kl_vae
    output = Path(args.output)
    for path in (brics_path, kl_path):
        if not args.skip_training and (output / "run").resolve() in (path.resolve(), *path.resolve().parents):
            parser.error(f"--output {args.output}: its run/ folder, emptied for the trainings, holds the stage-1 model "
                         f"{path}; choose another --output")
    sources = {"brics": str(brics_path), "autoencoderkl": str(kl_path), "pixels": "none"}
    if args.skip_training:
        run_dir = output / "run"
    else:
        run_dir = fresh_run_dir(output)
        for key, source in sources.items():
            train(key, source, run_dir, args, extra, resolution)

    inception = InceptionFeatures(args.inception_weights)
    held_out, column = load_split("held-out", resolution)
    train_set, train_column = load_split("train", resolution)
    reference = features_of(inception, image_batches(held_out, column, resolution, 64, args.max_reference_images,
                                                     "held-out images"))
    count = min(args.num_samples, len(train_set))
    baseline_set = train_set.shuffle(seed=args.seed).select(range(count))
    baseline_features = features_of(inception, image_batches(baseline_set, train_column, resolution, 64,
                                                             desc="real baseline"))
    baseline = distances(reference, baseline_features, inception, not args.no_fid, args.seed)

    models, neighbours = {}, None
    for key in sources:
        folder = run_dir / key
        keep = max(32, args.neighbour_samples) if key == "brics" else 32
        row, kept = evaluate_model(NAMES[key], folder, reference, inception, args, keep)
        shown = folder / "benchmark_command.txt"
        row["command"] = shown.read_text().strip() if shown.is_file() else None
        models[key] = row
        grid(kept[:32]).save(output / f"samples_{key}.png")
        if key == "brics":
            samples = torch.stack(kept[: args.neighbour_samples]) * 2 - 1
            lpips_distances, picture = nearest_neighbours(
                samples, image_batches(train_set, train_column, resolution, 64, neighbour_pool, "training images"),
                args.k)
            picture.save(output / "neighbours_brics.png")
            neighbours = {"samples": len(samples), "k": args.k, "lpips_distances": lpips_distances.tolist(),
                          "training_images_searched": min(neighbour_pool or len(train_set), len(train_set))}
        print(f"{NAMES[key]}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                if k in ("fid", "kid_mean", "kid_std", "seconds_per_image")),
              flush=True)

    results = {
        "command": command,
        "setup": {
            "unet_preset": args.unet_preset, "steps": args.steps, "default_steps": DEFAULT_STEPS,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "lr_warmup_steps": args.lr_warmup_steps, "seed": args.seed, "train_args": extra,
            "brics": os.path.relpath(brics_path.resolve(), ROOT), "kl": os.path.relpath(kl_path.resolve(), ROOT),
            "resolution": resolution, "num_samples": args.num_samples, "scheduler": "ddim",
            "num_inference_steps": args.num_inference_steps, "eval_batch_size": args.eval_batch_size,
            "fid": not args.no_fid, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "unet_preset_notes": preset_notes(args.unet_preset, latent_size, resolution),
        },
        "baseline": baseline,
        "models": models,
        "neighbours": neighbours,
    }
    outcome = goal(models)
    if outcome is not None:
        results["goal"] = {"statement": GOAL, "holds": outcome[0], "detail": outcome[1]}
    has_plot = plot_kid(results, output / "kid.png")
    text = report(results, has_plot)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
