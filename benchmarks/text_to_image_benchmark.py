"""Text-to-image on key codes: a time-boxed stage-2 run on the embedded emoji captions, then a prompt-by-seed grid,
KID against the held-out split with guidance 1 and 3, and the sampling time.

The captions are the embedded emoji's ``caption`` column: "short name, [skin tone,] category" (for example
"grinning, smileys and emotion"). With no pretrained text encoder to download, the run builds a `CLIPTextModel`
from a config (``--text_encoder_preset``) with a BPE tokenizer trained on the training captions and trains it with
the UNet (``--train_text_encoder``; ``--frozen_text_encoder`` keeps it random and frozen), with 10% conditioning
dropout for classifier-free guidance.

The autoencoder is ``--autoencoder`` (a stage-1 output folder), or else one trained first for ``--ae_minutes`` by
``examples/train_brics_ae.py`` with the quickstart's short-budget settings (``small-32``, L2 only).

Evaluation: every held-out image's caption is a prompt (the held-out emoji were never seen in training; their words
mostly were); one sample per caption, at each ``--guidance`` (the same seeds; the pipeline's own DDPM sampler with
``--num_inference_steps``, or ``--scheduler``), gives KID against the held-out images (random subsets of
``--kid_subset_size``, whose spread is the ± figure), beside the real-vs-real floor (as many training images against
the same held-out images). The grid shows ``--grid_prompts`` held-out captions (rows) by seeds (columns) at each
guidance. ``--reuse_run`` evaluates the model a previous run left in ``OUTPUT/run`` again, without training.
Writes ``results.json``, ``report.md`` and ``prompt_grid.png`` into ``--output``; the runs go to ``OUTPUT/run``
(git-ignored).

    python benchmarks/text_to_image_benchmark.py                      # about 15 minutes on 2 CPU cores
    python benchmarks/text_to_image_benchmark.py --autoencoder PATH --minutes 10
    python benchmarks/text_to_image_benchmark.py --reuse_run --scheduler ddim --num_inference_steps 50   # again
    python benchmarks/text_to_image_benchmark.py --tiny --output /tmp/t2i   # the test's smoke run

Arguments after ``--`` go to the stage-2 training script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusers_brics import BRICSTextToImagePipeline
from diffusers_brics.evaluate import image_batches, load_split
from diffusers_brics.metrics import prepare_weights
from diffusers_brics.metrics.inception import InceptionFeatures
from diffusers_brics.pipelines.loading import swap_scheduler

from benchmark_runs import ROOT, RESULTS, fresh_run_dir, run_shown, split_argv  # beside this script
from compare_generation import distances, features_of

GOAL = "guidance 3 lowers KID against the held-out images below guidance 1's"


def train_autoencoder(run_dir: Path, args) -> Path:
    """A stage-1 run of ``--ae_minutes`` (the quickstart's short-budget settings); returns its output folder."""
    folder = run_dir / "autoencoder"
    run_shown([
        sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--output_dir", str(folder),
        "--preset", "tiny" if args.tiny else "small-32", "--max_train_seconds", f"{args.ae_minutes * 60:g}",
        "--max_train_steps", "2" if args.tiny else "100000000", "--train_batch_size", "32",
        "--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2",
        "--validation_steps", "100000000", "--checkpointing_steps", "100000000", "--report_to", "none",
        "--seed", str(args.seed),
    ])
    return folder


def train_text_model(autoencoder: Path, run_dir: Path, args, extra: list[str]) -> str:
    """The stage-2 text-to-image run; returns its command as shown."""
    command = [
        sys.executable, str(ROOT / "examples" / "train_brics_diffusion.py"), "--autoencoder", str(autoencoder),
        "--output_dir", str(run_dir / "text_to_image"), "--caption_column", "caption",
        "--text_encoder_preset", "tiny" if args.tiny else args.text_encoder_preset,
        *([] if args.frozen_text_encoder else ["--train_text_encoder"]),
        "--conditioning_dropout_prob", str(args.conditioning_dropout_prob), "--unet_preset",
        "tiny" if args.tiny else "small", "--train_batch_size", str(args.batch_size), "--learning_rate",
        str(args.learning_rate), "--lr_warmup_steps", "2" if args.tiny else "100", "--random_flip",
        "--max_train_seconds", f"{args.minutes * 60:g}", "--max_train_steps", "3" if args.tiny else "100000000",
        "--validation_steps", "100000000", "--checkpointing_steps", "100000000", "--num_validation_images", "4",
        "--num_inference_steps", str(args.num_inference_steps), "--report_to", "none", "--seed", str(args.seed),
        *extra,
    ]
    return run_shown(command)


def sample(pipe: BRICSTextToImagePipeline, prompts: list[str], guidance: float, steps: int, batch_size: int,
           seeds: list[int]) -> tuple[torch.Tensor, float]:
    """One image per prompt (prompt ``i`` from seed ``seeds[i]``) in ``[-1, 1]``, and the seconds per image."""
    images, start = [], time.monotonic()
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[first : first + len(chunk)]]
        out = pipe(chunk, guidance_scale=guidance, num_inference_steps=steps, generator=generators,
                   output_type="pt").images
        images.append(out * 2 - 1)
    return torch.cat(images), (time.monotonic() - start) / len(prompts)


def save_grid(rows: dict[float, list[list]], prompts: list[str], path: Path) -> None:
    """Prompts (rows) by seeds (columns), one panel per guidance scale, labelled with the prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = len(next(iter(rows.values()))[0])
    panels = len(rows)
    fig, axes = plt.subplots(len(prompts), seeds * panels, squeeze=False,
                             figsize=(seeds * panels * 0.85 + 2.6, len(prompts) * 0.85 + 0.4))
    for p, (guidance, panel) in enumerate(rows.items()):
        for r, images in enumerate(panel):
            for c, image in enumerate(images):
                ax = axes[r, p * seeds + c]
                ax.imshow(image, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0 and c == 0:
                    ax.set_title(f"guidance {guidance:g}", fontsize=8, loc="left")
    for r, prompt in enumerate(prompts):
        axes[r, 0].set_ylabel(prompt, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the prompts, left of the grid, included
    plt.close(fig)


def main() -> None:
    argv, extra = split_argv([])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", default=None, help="a trained stage-1 output folder (default: train one)")
    parser.add_argument("--ae_minutes", type=float, default=4.0, help="stage-1 time when no --autoencoder is given")
    parser.add_argument("--minutes", type=float, default=8.0, help="stage-2 (text-to-image) training time")
    parser.add_argument("--text_encoder_preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--frozen_text_encoder", action="store_true",
                        help="keep the built text encoder random and frozen instead of training it with the UNet")
    parser.add_argument("--conditioning_dropout_prob", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=8e-4, help="the quickstart's stage-2 rate")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--num_inference_steps", type=int, default=100, help="sampling steps")
    parser.add_argument("--scheduler", default=None, choices=["ddpm", "ddim", "dpm"],
                        help="the sampler (default: the pipeline's own, DDPM), swapped in as `brics sample` does")
    parser.add_argument("--kid_subset_size", type=int, default=100)
    parser.add_argument("--reuse_run", action="store_true", help="evaluate OUTPUT/run again instead of training")
    parser.add_argument("--grid_prompts", type=int, default=8, help="held-out captions in the grid")
    parser.add_argument("--grid_seeds", type=int, default=6)
    parser.add_argument("--max_eval_images", type=int, default=None, help="held-out images for KID (default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny models and a few steps (the test's smoke run)")
    parser.add_argument("--output", default=str(RESULTS / "text_to_image"))
    args = parser.parse_args(argv)

    output = Path(args.output)
    previous = json.loads((output / "results.json").read_text()) if args.reuse_run else {}
    if args.reuse_run:
        run_dir = output / "run"
        autoencoder, ae_seconds, shown = previous["autoencoder"], previous["autoencoder_seconds"], \
            previous["training_command"]
    else:
        run_dir = fresh_run_dir(output)
        start = time.monotonic()
        autoencoder = Path(args.autoencoder) if args.autoencoder else train_autoencoder(run_dir, args)
        ae_seconds = time.monotonic() - start
        shown = train_text_model(autoencoder, run_dir, args, extra)
    folder = run_dir / "text_to_image"
    trained = json.loads((folder / "metrics.json").read_text())

    pipe = BRICSTextToImagePipeline.from_pretrained(folder)
    if args.scheduler is not None:
        swap_scheduler(pipe, args.scheduler)
    sampler = type(pipe.scheduler).__name__
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.vae.config.sample_size
    held_out, column = load_split("held-out", resolution, seed=args.seed)
    if args.max_eval_images:
        held_out = held_out.select(range(min(args.max_eval_images, len(held_out))))
    captions = list(held_out["caption"])

    # the prompt-by-seed grid: held-out captions spread over the split
    grid_prompts = [captions[round(i * (len(captions) - 1) / max(args.grid_prompts - 1, 1))]
                    for i in range(args.grid_prompts)]
    grid = {}
    for guidance in args.guidance:
        rows = []
        for prompt in grid_prompts:
            generators = [torch.Generator().manual_seed(seed) for seed in range(args.grid_seeds)]
            rows.append(pipe(prompt, num_images_per_prompt=args.grid_seeds, guidance_scale=guidance,
                             num_inference_steps=args.num_inference_steps, generator=generators).images)
        grid[guidance] = rows
    save_grid(grid, grid_prompts, output / "prompt_grid.png")

    # KID: one sample per held-out caption at each guidance, against the held-out images
    prepare_weights(("inception",))
    inception = InceptionFeatures()
    reference = features_of(inception, image_batches(held_out, column, resolution, 64, desc="held-out (Inception)"))
    train_split, train_column = load_split("train", resolution, seed=args.seed)
    train_split = train_split.shuffle(seed=args.seed).select(range(min(len(captions), len(train_split))))
    floor = distances(reference, features_of(inception, image_batches(train_split, train_column, resolution, 64,
                                                                        desc="training (Inception)")),
                      inception, with_fid=False, seed=args.seed, kid_subset_size=args.kid_subset_size)
    evaluations = {}
    for guidance in args.guidance:
        images, seconds = sample(pipe, captions, guidance, args.num_inference_steps, 64, list(range(len(captions))))
        features = features_of(inception, images.split(64))
        evaluations[f"{guidance:g}"] = {**distances(reference, features, inception, with_fid=False, seed=args.seed,
                                                    kid_subset_size=args.kid_subset_size),
                                        "seconds_per_image": seconds}
    first, last = (evaluations[f"{g:g}"] for g in (args.guidance[0], args.guidance[-1]))
    holds = last["kid_mean"] < first["kid_mean"]
    # by how many of the two estimates' spreads (over KID's random subsets) the two guidance scales differ
    separation = (first["kid_mean"] - last["kid_mean"]) / max((first["kid_std"] ** 2 + last["kid_std"] ** 2) ** 0.5,
                                                              1e-12)

    results = {
        "command": "python benchmarks/text_to_image_benchmark.py " + " ".join(sys.argv[1:]),
        "training_command": shown, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "autoencoder": str(autoencoder), "autoencoder_seconds": ae_seconds,
        "steps": trained["step"], "train_seconds": trained["train_seconds"],
        "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
        "tokenizer_size": len(pipe.tokenizer), "max_prompt_tokens": pipe.tokenizer.model_max_length,
        "held_out_captions": len(captions), "grid_prompts": grid_prompts, "sampler": sampler,
        "num_inference_steps": args.num_inference_steps, "real_vs_real": floor, "guidance": evaluations,
        "goal": {"goal": GOAL, "holds": holds, "difference_in_spreads": separation},
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# Text-to-image on BRICS key codes: {trained['step']} steps ({trained['train_seconds'] / 60:.1f} min)",
        "", f"`{results['command']}` (torch {torch.__version__}, {torch.get_num_threads()} threads)", "",
        f"Training: `{shown}`", "",
        "| figure | value |", "|---|---|",
        f"| UNet / text encoder parameters | {results['unet_parameters'] / 1e6:.2f}M / "
        f"{results['text_encoder_parameters'] / 1e6:.2f}M ({'frozen' if args.frozen_text_encoder else 'trained'}) |",
        f"| tokenizer | {len(pipe.tokenizer)} tokens, prompts padded to {pipe.tokenizer.model_max_length} |",
        f"| held-out captions (KID prompts) | {len(captions)} |",
        f"| real vs real KID x1e3 | {1e3 * floor['kid_mean']:.2f} ± {1e3 * floor['kid_std']:.2f} |",
    ]
    for guidance, figures in evaluations.items():
        lines.append(f"| guidance {guidance}: KID x1e3, s per image | {1e3 * figures['kid_mean']:.2f} ± "
                     f"{1e3 * figures['kid_std']:.2f}, {figures['seconds_per_image']:.3f} s "
                     f"({sampler}, {args.num_inference_steps} steps, batch 64) |")
    lines += ["", f"Goal: {GOAL}: **{'met' if holds else 'not met'}** (the difference is {separation:.1f} times the "
              "spread of the two estimates over KID's random subsets).", "",
              f"Rows: held-out captions; columns: seeds 0-{args.grid_seeds - 1} at each guidance (same noise).", "",
              "![prompt grid](prompt_grid.png)"]
    (output / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
