"""Stage-2 quality against budget: the runs of ``compare_generation.py`` at several UNet step budgets (one ``--output``
of it per budget) side by side, against UNet steps.

A latent run's KID has two parts: its floor (the KID of training images encoded and decoded by its autoencoder, what
stage 1 alone costs) and the rest, the share above the floor that the UNet leaves. Only the second falls with the
UNet's budget, and budgets trained on different autoencoders have different floors, so whether stage 2 has flattened
is read from the share above the floor: on a log-log plot a power law is a straight line, and a curve that flattens
bends towards the horizontal. The report gives that share's factor per doubling of the UNet steps between budgets; a
factor near 1 is a flattened curve.

Each entry groups the runs of one model at one budget on autoencoders of one budget (read from the stage-1 run's
record, ``result.json``, beside it): the 1,000-step runs of ``compare_generation.py`` use the 1,000-step
autoencoders, the longer ones those of 3,000 steps. Reads only the runs' records, so a clone can rebuild the report.
Writes ``results.json``, ``report.md`` and ``budgets.png`` into ``--output``.

    python benchmarks/compare_generation_budgets.py     # the 1,000 to 12,000-step outputs under benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from benchmark_runs import ROOT, RESULTS, shown_path  # beside this script
from compare_generation import BASELINE, MODELS
from compare_generation_report import COLORS, NAMES
from seeded_runs import RESULT, collect, seeds_text, show, spread

DEFAULT_OUTPUTS = [RESULTS / name for name in ("compare_generation", "compare_generation_4000",
                                               "compare_generation_8000", "compare_generation_12000")]  # fmt: skip
STAGE1_MARKERS = ("o", "s", "^", "D")  # one per autoencoder budget, in ascending order
LOG_TICKS = (2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 70, 100, 150, 200, 300)  # the log axis's labelled values


def output_folder(text: str) -> Path:
    """An ``--output`` of ``compare_generation.py``; an `argparse` type."""
    path = Path(text)
    if not (path / "runs").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} has no runs/ folder: expected an --output of compare_generation.py")
    return path


def stage1_steps(stage1: str | None) -> int | None:
    """The training steps of the autoencoder at ``stage1`` (a run folder of ``compare_autoencoders.py``, relative
    to the repository), from its record; None for pixels or a folder without a record."""
    if stage1 is None:
        return None
    record = (ROOT / stage1) / RESULT
    return json.loads(record.read_text())["setup"]["steps"] if record.is_file() else None


def run_row(seed: int, result: dict) -> dict:
    """A run's figures: KID (x1e3), its floor and the share above it (latent runs), FID, training minutes."""
    row = result["row"]
    figures = {"seed": seed, "kid": 1e3 * row["kid_mean"], "fid": row.get("fid"),
               "train_minutes": row["train_seconds"] / 60 if row.get("train_seconds") else None}  # fmt: skip
    if "decoded_training" in row:
        figures["floor"] = 1e3 * row["decoded_training"]["kid_mean"]
        figures["above_floor"] = figures["kid"] - figures["floor"]
    return figures


def per_doubling(before: dict, after: dict, key: str) -> dict | None:
    """The factor by which ``key`` changes per doubling of the UNet steps from entry ``before`` to ``after``, on the
    seeds both have (their means; the seeds named), or None when they share none or a value is not positive."""
    seeds = [r["seed"] for r in after["runs"] if r.get(key) is not None]
    values = {r["seed"]: r[key] for r in before["runs"] if r.get(key) is not None and r["seed"] in seeds}
    if not values:
        return None
    first = sum(values.values()) / len(values)
    last = sum(r[key] for r in after["runs"] if r["seed"] in values) / len(values)
    if first <= 0 or last <= 0:
        return None
    factor = (last / first) ** (1 / math.log2(after["steps"] / before["steps"]))
    every_seed = len(values) == len(before["runs"]) == len(after["runs"])
    return {"factor": factor, "seeds": sorted(values), "every_seed": every_seed}


def gather(outputs: list[Path], models: list[str]) -> tuple[list[dict], dict | None]:
    """One entry per model, UNet budget and autoencoder budget (the per-seed rows and their spread over seeds), with
    the factors per doubling from the model's previous budget; and the real-vs-real KID (x1e3) over every output's
    baseline runs."""
    groups: dict[tuple[str, int, int | None], list[dict]] = {}
    shown_of: dict[tuple[str, int, int | None], str] = {}
    baseline: dict[int, float] = {}  # the same training and held-out images in every output: one figure per seed
    for output in outputs:
        shown = shown_path(output)
        for kind, by_seed in collect(output, [*models, BASELINE]).items():
            for seed, result in by_seed.items():
                if kind == BASELINE:
                    baseline[seed] = 1e3 * result["row"]["kid_mean"]
                    continue
                key = (kind, result["setup"]["steps"], stage1_steps(result["row"].get("stage1")))
                groups.setdefault(key, []).append(run_row(seed, result))
                shown_of.setdefault(key, shown)
    entries = []
    for (kind, steps, ae_steps), rows in sorted(groups.items(), key=lambda g: (MODELS.index(g[0][0]), g[0][1])):
        entry = {"model": kind, "steps": steps, "autoencoder_steps": ae_steps, "output": shown_of[(kind, steps, ae_steps)],
                 "seeds": sorted(r["seed"] for r in rows), "runs": sorted(rows, key=lambda r: r["seed"])}  # fmt: skip
        for key in ("kid", "floor", "above_floor", "fid", "train_minutes"):
            if all(r.get(key) is not None for r in rows):
                entry[key] = spread([r[key] for r in rows])
        previous = next((e for e in reversed(entries) if e["model"] == kind), None)
        if previous is not None:
            entry["kid_per_doubling"] = per_doubling(previous, entry, "kid")
            entry["above_floor_per_doubling"] = per_doubling(previous, entry, "above_floor")
        entries.append(entry)
    return entries, (spread(list(baseline.values())) if baseline else None)


def report(results: dict) -> str:
    """``report.md``: one row per model and budget."""
    lines = [
        "# Stage-2 quality against budget", "", "```", results["command"], "```", "",
        "KID x1e3 of each budget's `compare_generation.py` runs (mean ± standard deviation over the seeds listed), the "
        "floor (training images through the run's autoencoder) and the share above it, the UNet's. Per doubling: the "
        "factor by which the mean changes per doubling of the UNet steps since the model's previous budget, on the "
        "seeds both budgets have (named where that is not all of them). For the share above the floor a factor near 1 "
        "is a flattened curve; between autoencoder budgets the KID's factor includes stage 1's change. Each budget is "
        "its own run, its learning rate annealed to 0 at its end: the plot's lines join budgets, not the points of one "
        "training. Training minutes as each run measured them (one thread per run, two runs side by side on the "
        "machine that made them).", "",
    ]  # fmt: skip
    if results["baseline"] is not None:
        lines += [f"Real vs real (training images against the held-out ones): KID {show(results['baseline'], 2)}.", ""]
    lines += [
        "| model | UNet steps | autoencoder steps | seeds | KID | floor | above floor | per doubling: KID | "
        "per doubling: above floor | FID | training minutes | output |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in results["entries"]:

        def cell(key: str, digits: int, e: dict = e) -> str:
            return show(e[key], digits) if key in e else "-"

        def factor(key: str, e: dict = e) -> str:
            change = e.get(key)
            if change is None:
                return "-"
            seeds = "" if change["every_seed"] else f" (seed {', '.join(map(str, change['seeds']))})"
            return f"{change['factor']:.2f}x{seeds}"

        ae_steps = "-" if e["autoencoder_steps"] is None else f"{e['autoencoder_steps']:,}"
        lines.append(
            f"| {NAMES[e['model']]} | {e['steps']:,} | {ae_steps} | {seeds_text(e['seeds'])} "
            f"| {cell('kid', 1)} | {cell('floor', 1)} | {cell('above_floor', 1)} | {factor('kid_per_doubling')} | "
            f"{factor('above_floor_per_doubling')} | {cell('fid', 1)} | {cell('train_minutes', 1)} | `{e['output']}` |"
        )
    lines += ["", "![KID and the share above the floor against UNet steps](budgets.png)", ""]
    return "\n".join(lines)


def plot(entries: list[dict], baseline: dict | None, output: Path) -> None:
    """``budgets.png``: KID (solid) with its floor (dashed) against UNet steps, and the share above the floor on log
    axes, one series per model and autoencoder budget (its marker), each seed a faint point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.0))
    axes[1].set_yscale("log")
    ae_budgets = sorted({e["autoencoder_steps"] for e in entries if e["autoencoder_steps"] is not None})
    series: dict[tuple[str, int | None], list[dict]] = {}
    for e in entries:
        series.setdefault((e["model"], e["autoencoder_steps"]), []).append(e)
    for (kind, ae_steps), points in series.items():
        marker = STAGE1_MARKERS[ae_budgets.index(ae_steps) % len(STAGE1_MARKERS)] if ae_steps is not None else "o"
        name = NAMES[kind] + (f" ({ae_steps:,}-step autoencoders)" if ae_steps is not None else "")
        style = dict(color=COLORS[kind], marker=marker, capsize=3)
        xs = [e["steps"] for e in points]
        axes[0].errorbar(xs, [e["kid"]["mean"] for e in points], yerr=[e["kid"]["std"] for e in points],
                         label=name, **style)  # fmt: skip
        if all("floor" in e for e in points):
            axes[0].plot(xs, [e["floor"]["mean"] for e in points], linestyle="--", alpha=0.6, color=COLORS[kind],
                         marker=marker)  # fmt: skip
            axes[1].errorbar(xs, [e["above_floor"]["mean"] for e in points],
                             yerr=[e["above_floor"]["std"] for e in points], **style)  # fmt: skip
            for e in points:
                axes[1].scatter([e["steps"]] * len(e["runs"]), [r["above_floor"] for r in e["runs"]],
                                color=COLORS[kind], marker=marker, alpha=0.3, s=12)  # fmt: skip
    axes[0].plot(
        [], [], linestyle="--", color="0.4", label="dashed: its floor (training images through its autoencoder)"
    )
    if baseline is not None:
        axes[0].axhline(baseline["mean"], color="0.4", linestyle=":", label="real vs real")
    budgets = sorted({e["steps"] for e in entries})
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [f"{steps:,}" for steps in budgets])
        ax.minorticks_off()
        ax.set_xlabel("UNet training steps (batch 32, log scale)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("KID x 1e3 (lower is better)")
    shares = [r["above_floor"] for e in entries for r in e["runs"] if r.get("above_floor")]
    if shares:
        ticks = [t for t in LOG_TICKS if min(shares) / 1.3 <= t <= max(shares) * 1.3]
        axes[1].set_yticks(ticks, [f"{t:g}" for t in ticks])
        axes[1].minorticks_off()
    axes[1].set_ylabel("KID above the floor x 1e3 (log scale)")
    axes[1].set_title("the UNet's share: a straight line is a power law, flattening bends it", fontsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(output / "budgets.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", nargs="+", type=output_folder, default=None, metavar="DIR",
                        help="compare_generation.py outputs, one per budget (default: those of 1,000 to 12,000 steps "
                        "under benchmarks/results that exist)")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL",
                        help=f"the models to show, of {', '.join(MODELS)} (default: all found)")  # fmt: skip
    parser.add_argument("--output", default=str(RESULTS / "compare_generation_budgets"))
    args = parser.parse_args()
    outputs = args.outputs or [path for path in DEFAULT_OUTPUTS if (path / "runs").is_dir()]
    entries, baseline = gather(outputs, args.models)
    if not entries:
        parser.error("--outputs: no ended runs (runs/<model>-seed<k>/result.json) of the chosen --models")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = {"command": shlex.join(["python", "benchmarks/compare_generation_budgets.py", *sys.argv[1:]]),
               "baseline": baseline, "entries": entries}  # fmt: skip
    (output / "results.json").write_text(json.dumps(results, indent=2))
    plot(entries, baseline, output)
    (output / "report.md").write_text(report(results))
    print((output / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
