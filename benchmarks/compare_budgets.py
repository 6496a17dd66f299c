"""Stage-1 quality against budget: the runs of ``compare_autoencoders.py`` at several step budgets (one ``--output``
of it per budget) side by side, against training steps and training minutes, with each model's PSNR on images of its
training split beside the held-out PSNR.

The gap between the two tells what limits a model at a budget: a model that reconstructs its training images much
better than held-out ones is fitting (and partly memorising) its data; one that reconstructs both about equally is
limited by what it can fit (capacity or optimisation), so more data would not help it, but more steps or width could.

An output may carry a label (``LABEL=DIR``): its runs are shown as their own rows, for a variant of a model trained
with other flags (``compare_autoencoders.py ... -- FLAGS``), such as BRICS with a wider decoder.

The training-split metrics of each run are cached in its folder (``train_split.json``, for the number of images it
was computed on), and committed beside its ``result.json``: a clone shows them without the trained model. Writes
``results.json``, ``report.md`` and ``budgets.png`` into ``--output``.

    python benchmarks/compare_budgets.py     # the 1,000 to 12,000-step outputs, the BRICS variants at 3,000
    python benchmarks/compare_budgets.py --outputs benchmarks/results/compare_autoencoders \\
        "wide decoder=benchmarks/results/brics_wide_decoder_3000" --output /tmp/budgets
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from diffusers_brics.evaluate import evaluate_reconstruction, image_batches, load_split
from diffusers_brics.models import adapters

from benchmark_runs import RESULTS, shown_path  # beside this script
from compare_autoencoders_report import COLORS, MODEL_TYPES, NAMES
from seeded_runs import collect, require_run_files, run_folder, seeds_text, show, spread, write_json_atomically

DEFAULT_OUTPUTS = [
    str(RESULTS / "compare_autoencoders"),
    str(RESULTS / "compare_autoencoders_3000"),
    str(RESULTS / "compare_autoencoders_6000"),
    str(RESULTS / "compare_autoencoders_12000"),
    f"wide decoder={RESULTS / 'brics_wide_decoder_3000'}",
    f"grids at 3e-2={RESULTS / 'brics_grid_lr_3e-2_3000'}",
    f"grids at 3e-3={RESULTS / 'brics_grid_lr_3e-3_3000'}",
]
TRAIN_SPLIT = "train_split.json"
VARIANT_MARKERS = ("s", "^", "v", "D", "P", "X")  # one per labelled output; the plain runs are circles


def parse_output(text: str) -> tuple[str, Path]:
    """``"DIR"`` or ``"LABEL=DIR"`` -> ``(label, dir)`` (label ``""`` when none); an `argparse` type."""
    label, _, folder = text.rpartition("=") if "=" in text else ("", "", text)
    path = Path(folder)
    if not (path / "runs").is_dir():
        raise argparse.ArgumentTypeError(
            f"{folder!r} has no runs/ folder: expected an --output of compare_autoencoders.py (or LABEL=that folder)"
        )
    return label.strip(), path


def training_seconds(result: dict) -> float | None:
    """Seconds the run of ``result`` (its ``result.json``) spent training (validation and checkpoints left out): its
    steps at the rate its training measured. The rate is that of the steps its last invocation trained, so a run
    resumed from a checkpoint counts all of its steps, also one resumed from a checkpoint that does not record its
    training time."""
    row = result["row"]
    rate = row.get("script_train_images_per_second")
    return row["steps"] * result["setup"]["batch_size"] / rate if rate else None


def train_split_metrics(folder: Path, images: int) -> dict:
    """PSNR / SSIM / LPIPS of the run's model on the first ``images`` training images, cached in ``folder``."""
    cache = folder / TRAIN_SPLIT
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("requested_images") == images:
            return cached
    kept_for = f"its {TRAIN_SPLIT} holds only the number of images it was measured on (--train_images 0 skips it)"
    require_run_files({folder.name: folder}, "autoencoder", kept_for)
    vae = adapters.load_autoencoder(str(folder)).eval()
    size = vae.config.sample_size
    train, column = load_split("train", size)
    batches = image_batches(train, column, size, 64, images, f"training split of {folder.name}")
    metrics, _ = evaluate_reconstruction(vae, batches, with_fid=False)
    result = {"requested_images": images, **{k: metrics[k] for k in ("psnr", "ssim", "lpips", "images")}}
    write_json_atomically(cache, result)
    return result


def gather(outputs: list[tuple[str, Path]], models: list[str], train_images: int | None) -> list[dict]:
    """One entry per model, variant and budget: the per-seed rows and their spread over seeds."""
    entries = []
    for label, output in outputs:
        shown = shown_path(output)
        for kind, by_seed in collect(output, models).items():
            by_steps: dict[int, list[dict]] = {}
            for seed, result in by_seed.items():
                folder = run_folder(output, kind, seed)
                row = {"seed": seed, "psnr": result["row"]["psnr"], "lpips": result["row"]["lpips"],
                       "train_seconds": training_seconds(result)}  # fmt: skip
                if train_images is not None:
                    split = train_split_metrics(folder, train_images)
                    row.update(train_psnr=split["psnr"], train_lpips=split["lpips"], train_images=split["images"])
                by_steps.setdefault(result["setup"]["steps"], []).append(row)
            for steps, rows in by_steps.items():
                entry = {"model": kind, "variant": label, "output": shown, "steps": steps,
                         "seeds": [r["seed"] for r in rows], "runs": rows}  # fmt: skip
                for key in ("psnr", "lpips", "train_seconds", "train_psnr", "train_lpips"):
                    if all(r.get(key) is not None for r in rows):
                        entry[key] = spread([r[key] for r in rows])
                if "train_psnr" in entry:
                    entry["gap"] = spread([r["train_psnr"] - r["psnr"] for r in rows])
                entries.append(entry)
    return sorted(entries, key=lambda e: (MODEL_TYPES.index(e["model"]), e["variant"], e["steps"]))


def name_of(entry: dict) -> str:
    """``"BRICS"``, or ``"BRICS (wide decoder)"`` for a labelled output's runs."""
    return NAMES[entry["model"]] + (f" ({entry['variant']})" if entry["variant"] else "")


def report(results: dict) -> str:
    """``report.md``: one row per model, variant and budget."""
    entries = results["entries"]
    lines = [
        "# Stage-1 quality against budget", "", "```", results["command"], "```", "",
        "Held-out PSNR and LPIPS-alex from each budget's `compare_autoencoders.py` runs (mean ± standard deviation over "
        "the seeds listed); training-split PSNR on the first "
        f"{results['train_images']} training images, the same models; gap = training-split minus held-out PSNR. "
        "Training minutes exclude validation and checkpoints, as each run measured them (one thread per run, two runs "
        "side by side on the machine that made them). Each budget is its own run, its learning rate annealed to 0 at its "
        "end: the plot's lines join budgets, not the points of one training.", "",
        "| model | steps | seeds | held-out PSNR | training-split PSNR | gap (dB) | held-out LPIPS | training minutes | output |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for e in entries:

        def cell(key: str, digits: int, scale: float = 1.0, e: dict = e) -> str:
            return show(e[key], digits, scale) if key in e else "-"

        lines.append(
            f"| {name_of(e)} | {e['steps']} | {seeds_text(e['seeds'])} | "
            f"{cell('psnr', 2)} | {cell('train_psnr', 2)} | {cell('gap', 2)} | {cell('lpips', 3)} | "
            f"{cell('train_seconds', 1, 1 / 60)} | `{e['output']}` |"
        )
    lines += ["", "![PSNR against steps and training minutes](budgets.png)", ""]
    return "\n".join(lines)


def plot(entries: list[dict], output: Path) -> None:
    """``budgets.png``: held-out (solid) and training-split (dashed) PSNR against steps and against minutes, both on
    a log scale, where each doubling of the budget is the same width and a curve that flattens bends down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.8))
    series: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        series.setdefault((e["model"], e["variant"]), []).append(e)
    variants = list(dict.fromkeys(variant for _, variant in series if variant))
    for (kind, variant), points in series.items():
        points = sorted(points, key=lambda e: e["steps"])
        marker = VARIANT_MARKERS[variants.index(variant) % len(VARIANT_MARKERS)] if variant else "o"
        style = dict(color=COLORS[kind], marker=marker, capsize=3)
        for ax, x_of in ((axes[0], lambda e: e["steps"]), (axes[1], lambda e: e["train_seconds"]["mean"] / 60)):
            shown = [e for e in points if "train_seconds" in e] if ax is axes[1] else points
            if not shown:
                continue
            xs = [x_of(e) for e in shown]
            ax.errorbar(xs, [e["psnr"]["mean"] for e in shown], yerr=[e["psnr"]["std"] for e in shown],
                        label=f"{name_of(shown[0])} held-out", **style)  # fmt: skip
            if all("train_psnr" in e for e in shown):
                ax.plot(xs, [e["train_psnr"]["mean"] for e in shown], linestyle="--", alpha=0.6,
                        label=f"{name_of(shown[0])} training split", color=COLORS[kind], marker=style["marker"])  # fmt: skip
    axes[0].set_xlabel("training steps (batch 16, log scale)")
    axes[1].set_xlabel("training minutes (one thread, log scale)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    budgets = sorted({e["steps"] for e in entries})
    axes[0].set_xticks(budgets, [f"{steps:,}" for steps in budgets])
    axes[0].minorticks_off()
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(output / "budgets.png", dpi=120)
    plt.close(fig)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--outputs",
        nargs="+",
        type=parse_output,
        default=None,
        metavar="[LABEL=]DIR",
        help="compare_autoencoders.py outputs, one per budget or variant (default: the 1,000, "
        "3,000 and 6,000-step ones and the BRICS variants at 3,000 steps under benchmarks/results)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(MODEL_TYPES),
        choices=MODEL_TYPES,
        metavar="MODEL",
        help=f"the models to show, of {', '.join(MODEL_TYPES)} (default: all found)",
    )
    parser.add_argument(
        "--train_images",
        type=int,
        default=1000,
        help="training images to evaluate each model on (default 1000; 0: skip the training split)",
    )
    parser.add_argument("--output", default=str(RESULTS / "compare_budgets"))
    args = parser.parse_args()
    if args.train_images < 0:
        parser.error(f"--train_images must be >= 0, got {args.train_images}")
    outputs = args.outputs or [
        parse_output(text) for text in DEFAULT_OUTPUTS if (Path(text.rpartition("=")[2]) / "runs").is_dir()
    ]
    entries = gather(outputs, args.models, args.train_images or None)
    if not entries:
        parser.error("--outputs: no ended runs (runs/<model>-seed<k>/result.json) of the chosen --models")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = {"command": shlex.join(["python", "benchmarks/compare_budgets.py", *sys.argv[1:]]),
               "train_images": args.train_images, "torch": torch.__version__, "entries": entries}  # fmt: skip
    (output / "results.json").write_text(json.dumps(results, indent=2))
    plot(entries, output)
    (output / "report.md").write_text(report(results))
    print((output / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
