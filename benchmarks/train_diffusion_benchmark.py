"""Stage-2 training benchmark: a time-boxed class-conditional run on the embedded emoji, then a sample grid.

Runs ``examples/train_brics_diffusion.py`` for ``--minutes`` on the key codes of a trained stage-1 autoencoder (by
default the one ``train_ae_benchmark.py`` leaves in ``benchmarks/results/train_ae_small32/run``), conditioned on
the emoji ``category`` column, then samples every class from the same seeds. Writes ``results.json``,
``report.md`` and ``class_samples.png`` (one row per class) into ``--output``.

    python benchmarks/train_ae_benchmark.py --minutes 10          # the autoencoder
    python benchmarks/train_diffusion_benchmark.py --minutes 10

Arguments after ``--`` go to the training script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusers_brics import BRICSPipeline

from benchmark_runs import ROOT, RESULTS, fresh_run_dir, run_shown, split_argv  # beside this script


def class_grid(pipe: BRICSPipeline, per_class: int, steps: int) -> list[list]:
    """``per_class`` samples of every class, from seeds ``0 .. per_class - 1`` (the same noise in every row)."""
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for name in pipe.labels:
        generators = [torch.Generator().manual_seed(seed) for seed in range(per_class)]
        rows.append(pipe(batch_size=per_class, class_labels=name, generator=generators,
                         num_inference_steps=steps).images)
    return rows


def save_grid(rows: list[list], names: list[str], path: Path) -> None:
    """One row of samples per class, labelled with the class name when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from diffusers.utils import make_image_grid

        make_image_grid([image for row in rows for image in row], rows=len(rows), cols=len(rows[0])).save(path)
        return
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(len(rows[0]) * 0.9 + 1.6, len(rows) * 0.9),
                             squeeze=False)
    for r, (row, name) in enumerate(zip(rows, names)):
        for c, image in enumerate(row):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    argv, extra = split_argv([])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--autoencoder", default=str(RESULTS / "train_ae_small32" / "run" / "autoencoder"))
    parser.add_argument("--class_column", default="category")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=8e-4,
                        help="the paper's rate, with which the committed report was made (the script's default is the "
                             "release's 8e-5)")
    parser.add_argument("--samples_per_class", type=int, default=8)
    parser.add_argument("--num_inference_steps", type=int, default=100)
    parser.add_argument("--output", default=str(RESULTS / "train_diffusion_small32"))
    args = parser.parse_args(argv)
    if not (Path(args.autoencoder) / "config.json").is_file():
        raise FileNotFoundError(f"--autoencoder {args.autoencoder!r} holds no trained autoencoder: run "
                                "`python benchmarks/train_ae_benchmark.py --minutes 10` first, or pass a folder")

    output = Path(args.output)
    run_dir = fresh_run_dir(output)
    command = [
        sys.executable, str(ROOT / "examples" / "train_brics_diffusion.py"), "--autoencoder", args.autoencoder,
        "--output_dir", str(run_dir), "--class_column", args.class_column, "--random_flip",
        "--train_batch_size", str(args.batch_size), "--learning_rate", str(args.learning_rate),
        "--max_train_seconds", str(args.minutes * 60),
        "--max_train_steps", "100000000", "--validation_steps", "100000000", "--checkpointing_steps", "100000000",
        "--report_to", "none", *extra,
    ]
    start = time.monotonic()
    shown = run_shown(command)
    wall = time.monotonic() - start
    steps = max(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))

    pipe = BRICSPipeline.from_pretrained(run_dir)
    names = list(pipe.labels)
    start = time.monotonic()
    rows = class_grid(pipe, args.samples_per_class, args.num_inference_steps)
    sampling = (time.monotonic() - start) / (len(rows) * args.samples_per_class)
    save_grid(rows, names, output / "class_samples.png")
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    results = {"command": shown, "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
               "steps_per_second": steps / (args.minutes * 60), "wall_seconds": wall, "classes": names,
               "unet_parameters": unet_params, "seconds_per_sample": sampling,
               "num_inference_steps": args.num_inference_steps}
    (output / "results.json").write_text(json.dumps(results, indent=2))
    report = [
        f"# Stage-2 training benchmark: class-conditional on `{args.class_column}`, {args.minutes:g} minutes",
        "",
        f"`{shown}` (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| training steps | {steps} (batch {args.batch_size}), {steps / (args.minutes * 60):.2f} steps/s |",
        f"| UNet parameters | {unet_params / 1e6:.2f}M |",
        f"| classes | {len(names)}: {', '.join(names)} |",
        f"| sampling | {sampling:.2f} s per image ({args.num_inference_steps} DDPM steps, batch "
        f"{args.samples_per_class}) |",
        "",
        f"Rows: classes; columns: seeds 0-{args.samples_per_class - 1}, the same initial noise in every row.",
        "",
        "![class samples](class_samples.png)",
    ]
    (output / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
