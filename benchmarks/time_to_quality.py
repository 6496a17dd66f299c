"""Time to quality: how fast each training recipe reaches a given quality, side by side on one machine.

Stage 1 (``--stage autoencoder``): held-out PSNR and LPIPS-alex of the EMA weights against training steps and
seconds, read from each run's ``validation_history.jsonl`` (the `Trainer` validates every ``--eval_every`` steps;
validation and checkpoint time are left out of the seconds). It reports the seconds and steps each recipe takes to
reach fixed PSNR levels (``--levels``, linear between validations) and their ratio to ``--reference``'s (by default
AutoencoderKL of the same code size, trained by the same script).

Stage 2 (``--stage diffusion``): the KID (x 1e3) of ``--num_samples`` samples against the held-out split, for the EMA
UNet of each checkpoint (one every ``--eval_every`` steps), sampled with ``--sampler`` (DDIM by default, its estimate
of the clean key codes clipped to their range) at ``--num_inference_steps``; the KID of as many training images
against the same split is the floor. The UNets train on the key codes of ``--autoencoder`` (a stage-1 output folder, for example a run of ``--stage autoencoder``).

Every run is a ``brics train-ae`` / ``brics train-diffusion`` command in its own process, one after the other, into
``OUTPUT/runs/<stage>/<recipe>`` (git-ignored). A run that finished is reused, so recipes can be added later and a
report assembled from runs made at different times (on the same machine: seconds are only comparable there). The
evaluation of stage-2 checkpoints is cached beside them (``kid.json``). Writes ``results_<stage>.json``,
``report_<stage>.md`` and ``<stage>.png`` (quality against seconds and against steps) into ``--output``.

    python benchmarks/time_to_quality.py --stage autoencoder
    python benchmarks/time_to_quality.py --stage diffusion --autoencoder benchmarks/results/time_to_quality/runs/autoencoder/small-32
    python benchmarks/time_to_quality.py --stage autoencoder --recipes small-32,autoencoderkl-32 --steps 600
    python benchmarks/time_to_quality.py --stage autoencoder --recipe "mine=--preset small-32 --learning_rate 4e-3"
    python benchmarks/time_to_quality.py --tiny --output /tmp/ttq   # both stages in seconds (the test's smoke run)

``--threads`` sets the threads of every run (default: all cores); arguments after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from pathlib import Path

import torch

from diffusers_brics.evaluate import image_batches, load_split, sample_images, to_unit
from diffusers_brics.metrics.inception import InceptionFeatures
from diffusers_brics.pipelines.loading import load_pipeline

from benchmark_runs import RESULTS, run_shown, split_argv  # beside this script
from compare_generation import distances, grid  # beside this script

# Stage-1 recipes: flags of `brics train-ae` (on top of the common ones in `train_autoencoder`).
AUTOENCODER_RECIPES = {
    # this package's small-image recipe: the small-32 preset with the defaults train-ae gives it
    "small-32": "--preset small-32",
    # the earlier main job: the release's layout at the small widths (the small-32 preset before 0.2), the release's
    # recipe less the perceptual and GAN terms, batch 32, the grids at 1e-2
    "earlier-quickstart": "--model_config_name_or_path benchmarks/configs/small-32-release-layout --training_recipe "
                          "release --train_batch_size 32 --perceptual_weight 0 --gan_weight 0 --grid_learning_rate 1e-2",
    # the small-32 preset with the release's stage-1 recipe (VGG at 224, the GAN from the start, batch 16)
    "small-32-release-recipe": "--preset small-32 --training_recipe release",
    # diffusers' AutoencoderKL with the same 8x8x4 code, trained by the same script with the same recipe
    "autoencoderkl-32": "--model_type autoencoderkl --preset small-32",
}
# Stage-2 recipes: flags of `brics train-diffusion`.
DIFFUSION_RECIPES = {
    # this package's short-run recipe with the small UNet: what brics train-diffusion gives it (batch 32)
    "short": "--unet_preset small --random_flip",
    # the same at batch 64
    "short-batch-64": "--unet_preset small --random_flip --train_batch_size 64",
    # the earlier quickstart's flags: epsilon prediction at 8e-4 with 100 warm-up steps and a cosine decay
    "earlier-quickstart": "--unet_preset small --random_flip --training_recipe release --learning_rate 8e-4 "
                          "--lr_warmup_steps 100 --lr_scheduler cosine --max_grad_norm 1 --adam_beta2 0.999 "
                          "--ema_power 0.75",
    # the release's optimiser settings (lr 8e-5, made for runs of hundreds of thousands of steps)
    "release-recipe": "--unet_preset small --random_flip --training_recipe release",
}
DEFAULT_RECIPES = {"autoencoder": ["small-32", "earlier-quickstart", "autoencoderkl-32"],
                   "diffusion": ["short", "short-batch-64", "earlier-quickstart"]}
TINY = {"autoencoder": {"tiny": "--preset tiny", "tiny-kl": "--model_type autoencoderkl --preset tiny"},
        "diffusion": {"tiny": "--unet_preset tiny", "tiny-v": "--unet_preset tiny --prediction_type v_prediction"}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["autoencoder", "diffusion"], default="autoencoder")
    p.add_argument("--recipes", help="comma-separated names (default: a stage's usual set); known: "
                   f"{', '.join(AUTOENCODER_RECIPES)} (autoencoder), {', '.join(DIFFUSION_RECIPES)} (diffusion)")
    p.add_argument("--recipe", action="append", default=[], metavar="NAME=FLAGS",
                   help="an extra recipe: a name and its training flags (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each run (default 1600 / 1600)")
    p.add_argument("--eval_every", type=int, default=None, help="steps between evaluations (default 200)")
    p.add_argument("--levels", default="20,22,24", help="PSNR levels (dB) whose time to reach is reported")
    p.add_argument("--reference", default=None,
                   help="the recipe the times are divided by (default: autoencoderkl-32 where it ran)")
    p.add_argument("--autoencoder", help="stage 2: the stage-1 output folder whose key codes the UNets learn")
    p.add_argument("--num_samples", type=int, default=256, help="stage 2: samples per KID")
    p.add_argument("--num_inference_steps", type=int, default=50, help="stage 2: sampling steps")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpm"], default="ddim",
                   help="stage 2: the sampler, clipped to the key codes' range (as the quickstart samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="threads of each run (default: torch's)")
    p.add_argument("--output", type=Path, default=RESULTS / "time_to_quality")
    p.add_argument("--tiny", action="store_true", help="tiny models, a few steps (seconds)")
    args = p.parse_args(argv)
    if args.stage == "diffusion" and not args.autoencoder and not args.tiny:
        p.error("--stage diffusion needs --autoencoder (a stage-1 output folder)")
    if args.tiny:
        args.steps, args.eval_every = args.steps or 4, args.eval_every or 2
        args.num_samples, args.num_inference_steps = min(args.num_samples, 16), min(args.num_inference_steps, 4)
    args.steps, args.eval_every = args.steps or 1600, args.eval_every or 200
    return args


def recipes_of(args: argparse.Namespace) -> dict[str, str]:
    """The recipes to run: name -> training flags."""
    known = TINY[args.stage] if args.tiny else AUTOENCODER_RECIPES if args.stage == "autoencoder" else DIFFUSION_RECIPES
    if args.recipes is not None:  # "" with --recipe: only those
        names = [name for name in args.recipes.split(",") if name]
    else:
        names = list(known) if args.tiny else DEFAULT_RECIPES[args.stage]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"time_to_quality: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = {name: known[name] for name in names}
    for text in args.recipe:
        name, _, flags = text.partition("=")
        if not name or not flags:
            raise SystemExit(f"time_to_quality: --recipe takes NAME=FLAGS, got {text!r}")
        chosen[name] = flags
    return chosen


def train(stage: str, name: str, flags: str, run_dir: Path, args, extra: list[str]) -> None:
    """One training run (unless it finished before) with an evaluation every ``eval_every`` steps."""
    if (run_dir / "metrics.json").is_file():
        print(f"[time_to_quality] {stage} {name}: reusing {run_dir}", flush=True)
        return
    common = ["--output_dir", str(run_dir), "--max_train_steps", str(args.steps), "--seed", str(args.seed),
              "--report_to", "none"]
    if stage == "autoencoder":
        common += ["--validation_steps", str(args.eval_every), "--checkpointing_steps", str(10**8)]
    else:  # checkpoints keep the EMA UNets that are sampled afterwards (validation: a small grid, untimed)
        common += ["--autoencoder", str(args.autoencoder), "--checkpointing_steps", str(args.eval_every),
                   "--validation_steps", str(args.eval_every), "--num_validation_images", "4"]
    if args.tiny:
        common += ["--train_batch_size", "8"] + (["--max_eval_images", "16"] if stage == "autoencoder" else [])
    if run_dir.exists():
        common += ["--resume_from_checkpoint", "latest"]
    command = [sys.executable, "-m", "diffusers_brics", "train-ae" if stage == "autoencoder" else "train-diffusion",
               *common, *shlex.split(flags), *extra]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    shown = run_shown(command, env=env)
    (run_dir / "benchmark_command.txt").write_text(shown + "\n")


def autoencoder_curve(run_dir: Path) -> list[dict]:
    """``{step, seconds, psnr, lpips}`` per validation of a stage-1 run."""
    rows = [json.loads(line) for line in (run_dir / "validation_history.jsonl").read_text().splitlines() if line]
    return [{"step": r["step"], "seconds": r["train_seconds"], "psnr": r["psnr"], "lpips": r["lpips"]} for r in rows]


def seconds_to_reach(curve: list[dict], key: str, level: float) -> dict | None:
    """Seconds and steps at which ``key`` first reaches ``level`` (linear between evaluations), or None; reached at
    the first evaluation, they are an upper bound (``"at_most": True``)."""
    previous = {"step": 0, "seconds": 0.0, key: -math.inf}
    for point in curve:
        if point[key] >= level:
            if previous[key] == -math.inf:
                return {"step": point["step"], "seconds": point["seconds"], "at_most": True}
            t = (level - previous[key]) / (point[key] - previous[key])
            return {k: previous[k] + t * (point[k] - previous[k]) for k in ("step", "seconds")}
        previous = point
    return None


@torch.no_grad()
def diffusion_curve(run_dir: Path, args, reference: list[torch.Tensor], inception) -> list[dict]:
    """KID of samples of each checkpoint's EMA UNet (cached in ``kid.json`` beside the run)."""
    from diffusers import UNet2DModel

    cache_path = run_dir / "kid.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    history = {r["step"]: r["train_seconds"] for r in map(json.loads, (run_dir / "validation_history.jsonl")
                                                           .read_text().splitlines())}
    pipeline = load_pipeline(str(run_dir), args.sampler)
    pipeline.set_progress_bar_config(disable=True)
    curve = []
    for step in sorted(history):
        key = f"{step}/{args.num_samples}/{args.num_inference_steps}/{type(pipeline.scheduler).__name__}"
        if key not in cache:
            pipeline.unet = UNet2DModel.from_pretrained(run_dir / f"checkpoint-{step}" / "unet_ema").eval()
            features, kept = [], []
            for images in sample_images(pipeline, args.num_samples, 64, args.num_inference_steps, args.seed,
                                        desc=f"{run_dir.name} step {step}"):
                features.append(inception(images).double().cpu())
                kept += list(images[: max(0, 32 - len(kept))])
            cache[key] = distances(reference, features, inception, False, args.seed)
            grid(kept).save(run_dir / f"samples_{step}.png")
            cache_path.write_text(json.dumps(cache, indent=2))
        result = cache[key]
        curve.append({"step": step, "seconds": history[step], "kid": 1e3 * result["kid_mean"],
                      "kid_std": 1e3 * result["kid_std"]})
    return curve


@torch.no_grad()
def real_features(resolution: int, args, inception, cache: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inception features of the held-out split (the reference) and of ``num_samples`` training images (the floor),
    computed once into ``cache``."""
    if cache.is_file():
        saved = torch.load(cache)
        return saved["reference"], saved["floor"]
    held_out, column = load_split("held-out", resolution, seed=args.seed)
    limit = 32 if args.tiny else None  # the tiny mode's reference: a few held-out images
    reference = [inception(to_unit(b)).double().cpu()
                 for b in image_batches(held_out, column, resolution, 64, max_images=limit)]
    train_split, train_column = load_split("train", resolution, seed=args.seed)
    train_split = train_split.shuffle(seed=args.seed).select(range(min(args.num_samples, len(train_split))))
    floor = [inception(to_unit(b)).double().cpu() for b in image_batches(train_split, train_column, resolution, 64)]
    torch.save({"reference": reference, "floor": floor}, cache)
    return reference, floor


def plot(results: dict, key: str, label: str, path: Path, floor: float | None = None) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name, run in results["runs"].items():
        for ax, x in zip(axes, ("seconds", "step")):
            ax.plot([p[x] for p in run["curve"]], [p[key] for p in run["curve"]], marker=".", label=name)
    for ax, x in zip(axes, ("training seconds", "training steps")):
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if floor is not None:
            ax.axhline(floor, color="0.4", linestyle="--", label="real vs real")
    axes[0].set_ylabel(label)
    if key == "kid":
        axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle(results["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def environment() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} cores"


def report_autoencoder(results: dict, levels: list[float], reference: str | None) -> list[str]:
    lines = ["| recipe | steps | seconds | s / step | final PSNR (dB) | final LPIPS | "
             + " | ".join(f"s to {lv:g} dB" for lv in levels) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(levels)]
    for name, run in results["runs"].items():
        last = run["curve"][-1]
        cells = []
        for level in levels:
            hit = run["reach"].get(f"{level:g}")
            ratio = run["ratio"].get(f"{level:g}")
            bound = "<= " if hit and hit.get("at_most") else ""
            cells.append("not reached" if hit is None else f"{bound}{hit['seconds']:.0f} ({bound}{hit['step']:.0f} steps)"
                         + (f", {ratio:.2f}x" if ratio is not None and name != reference else ""))
        lines.append(f"| {name} | {last['step']} | {last['seconds']:.0f} | {last['seconds'] / last['step']:.3f} | "
                     f"{last['psnr']:.2f} | {last['lpips']:.4f} | " + " | ".join(cells) + " |")
    if reference:
        lines += ["", f"Ratios: seconds to reach a level divided by `{reference}`'s (below 1: faster). `<=`: reached by "
                  "the first evaluation, so at most that."]
    return lines


def report_diffusion(results: dict) -> list[str]:
    lines = ["| recipe | " + " | ".join(f"step {p['step']}" for p in next(iter(results["runs"].values()))["curve"])
             + " |", "|---|" + "---:|" * len(next(iter(results["runs"].values()))["curve"])]
    for name, run in results["runs"].items():
        lines.append(f"| {name} | " + " | ".join(f"{p['kid']:.1f} ± {p['kid_std']:.1f} ({p['seconds']:.0f} s)"
                                                for p in run["curve"]) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    own, extra = split_argv([]) if argv is None else (argv, [])
    args = parse_args(own)
    recipes = recipes_of(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_dir = args.output / "runs" / args.stage
    runs_dir.mkdir(parents=True, exist_ok=True)
    for name, flags in recipes.items():
        train(args.stage, name, flags, runs_dir / name, args, extra)

    command = "python benchmarks/time_to_quality.py " + shlex.join(own)
    results = {"command": command, "environment": environment(), "recipes": recipes, "runs": {}}
    if args.stage == "autoencoder":
        levels = [float(v) for v in args.levels.split(",")]
        for name in recipes:
            curve = autoencoder_curve(runs_dir / name)
            results["runs"][name] = {"curve": curve, "reach": {f"{lv:g}": seconds_to_reach(curve, "psnr", lv)
                                                               for lv in levels}}
        reference = args.reference or ("autoencoderkl-32" if "autoencoderkl-32" in recipes else None)
        for run in results["runs"].values():
            base = results["runs"].get(reference, {}).get("reach", {})
            run["ratio"] = {lv: (hit["seconds"] / base[lv]["seconds"] if hit and base.get(lv) else None)
                            for lv, hit in run["reach"].items()}
        results["title"] = "Stage 1: held-out PSNR of the EMA weights"
        table = report_autoencoder(results, levels, reference)
        plotted = plot(results, "psnr", "held-out PSNR (dB)", args.output / "autoencoder.png")
    else:
        inception = InceptionFeatures()
        pipeline = load_pipeline(str(runs_dir / next(iter(recipes))))
        reference, floor_features = real_features(pipeline.vae.config.sample_size, args, inception,
                                                  runs_dir / f"real_features_{args.num_samples}_{args.seed}.pt")
        floor = distances(reference, floor_features, inception, False, args.seed)
        results["floor_kid"] = 1e3 * floor["kid_mean"]
        for name in recipes:
            results["runs"][name] = {"curve": diffusion_curve(runs_dir / name, args, reference, inception)}
        results["title"] = (f"Stage 2: KID x1e3 of {args.num_samples} samples ({args.num_inference_steps} steps) "
                            "against the held-out split")
        table = report_diffusion(results)
        plotted = plot(results, "kid", "KID x 1e3 (log)", args.output / "diffusion.png", results["floor_kid"])

    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"results_{args.stage}.json").write_text(json.dumps(results, indent=2))
    lines = [f"# Time to quality: {args.stage}", "", f"`{command}` ({results['environment']})", "",
             results["title"] + f"; one run per recipe, seed {args.seed}.", "", *table]
    if args.stage == "diffusion":
        lines += ["", f"Real vs real (as many training images as samples): KID x1e3 {results['floor_kid']:.1f}."]
    lines += ["", "Recipes (flags of the training command):", ""]
    lines += [f"- `{name}`: `{flags}`" for name, flags in recipes.items()]
    if plotted:
        lines += ["", f"![{args.stage}]({args.stage}.png)"]
    (args.output / f"report_{args.stage}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
