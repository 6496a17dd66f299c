"""The report of ``relaxed_precision_benchmark.py``: the paper's figures, the tables of each model's evaluations
averaged over its seeds, the mean and spread over seeds of the headline figures, and the plot (``results.json``,
``report.md``, ``psnr_vs_perturbation.png``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from seeded_runs import seeds_text, show, spread

PAPER_TABLE_6 = {  # LSUN-Church 256^2, 32x32x4 codes, 800k images: mean +- std over validation images
    "w/o noise": {"lpips": (0.12, 0.07), "ssim": (0.67, 0.21), "psnr": (22.29, 6.14)},
    "with noise": {"lpips": (0.11, 0.07), "ssim": (0.68, 0.20), "psnr": (22.45, 5.98)},
}
PAPER_KL_SIGMA = (8.95e-5, 8.0e-4)  # supplementary D.1: mean +- std of sigma over 5,000 training images


def plot(results: dict, amplitudes: list[float], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    gaussian_x = math.sqrt(3) / 2  # U(-A, A) has std A / sqrt(3): the uniform amplitude of the Gaussian's std
    for (label, entry), color in zip(results["evaluations"].items(), ("#4c72b0", "#dd8452", "#55a868", "#8172b2")):
        for ax, key in zip(axes, ("psnr", "lpips")):
            ys = [entry["perturbed"][f"uniform_{a:g}"][key]["mean"] for a in amplitudes]
            ax.plot(amplitudes, ys, marker="o", color=color, label=label)
            ax.plot(
                [gaussian_x],
                [entry["perturbed"]["gaussian"][key]["mean"]],
                marker="*",
                markersize=12,
                color=color,
                linestyle="none",
            )
    for ax, name in zip(axes, ("held-out PSNR (dB)", "held-out LPIPS-alex")):
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.set_xlabel("uniform perturbation amplitude a, in units of 1/(2 r_max)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title("PSNR under key-code perturbation")
    axes[1].set_title("LPIPS-alex under key-code perturbation")
    axes[0].legend(fontsize=8)
    fig.text(
        0.5,
        0.005,
        "dots: uniform noise a/(2 r_max) * U(-1, 1); stars: Gaussian noise of std 1/(4 r_max), "
        "placed at the uniform amplitude of equal std; shaded: the paper's +-1/(2 r_max)",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fmt(stat: dict, digits: int) -> str:
    return f"{stat['mean']:.{digits}f} +- {stat['std']:.{digits}f}"


def cell(stat: dict, digits: int) -> str:
    """``mean (change ± standard error)``; the change is paired, from the model's unperturbed decode."""
    return f"{stat['mean']:.{digits}f} ({stat['delta']:+.{digits}f} ± {stat['delta_se']:.{digits}f})"


def summary_lines(evaluations: dict, amplitudes: list[float]) -> list[str]:
    """What the tables say about the paper's claims, read off the numbers."""
    inside = [a for a in amplitudes if 0 < a <= 1]
    lines = []
    if inside:
        worst = {
            label: min(e["perturbed"][f"uniform_{a:g}"]["psnr"]["delta"] for a in inside)
            for label, e in evaluations.items()
        }
        lines.append(
            "Within the paper's interval (0 < a <= 1), the largest mean PSNR change per model: "
            + "; ".join(f"{label} {value:+.2f} dB" for label, value in worst.items())
            + "."
        )
    outside = [a for a in amplitudes if a > 1]
    if outside:
        lines.append(
            f"Beyond it (a = {outside[-1]:g}): "
            + "; ".join(
                f"{label} {e['perturbed'][f'uniform_{outside[-1]:g}']['psnr']['delta']:+.2f} dB"
                for label, e in evaluations.items()
            )
            + "."
        )
    if {"relaxed precision", "no relaxed precision"} <= set(evaluations):
        on, off = (evaluations[k]["deterministic"] for k in ("relaxed precision", "no relaxed precision"))
        lines.append(
            "Relaxed precision on minus off, deterministic decode: PSNR "
            f"{on['psnr']['mean'] - off['psnr']['mean']:+.2f} dB, SSIM {on['ssim']['mean'] - off['ssim']['mean']:+.4f}, LPIPS "
            f"{on['lpips']['mean'] - off['lpips']['mean']:+.4f} (paper Table 6: +0.16 dB, +0.01, -0.01)."
        )
    return [" ".join(lines)] if lines else []


def report_lines(results: dict, amplitudes: list[float], has_plot: bool) -> list[str]:
    setup, evaluations = results["setup"], results["evaluations"]
    r_max = setup["r_max"]
    lines = [
        "# Relaxed precision: reconstruction with and without key-code noise (paper Table 6, supplementary D)",
        "",
        f"`{results['command']}`",
        "",
        (
            f"Preset `{setup['preset']}` ({setup['sample_size']}x{setup['sample_size']}, key codes "
            f"{setup['latent_size']}x{setup['latent_size']}x{setup['latent_channels']}, r_max = {r_max:g}, so "
            f"1/(2 r_max) = {1 / (2 * r_max):.5f} and 1/(4 r_max) = {1 / (4 * r_max):.5f}); {setup['steps']} steps at "
            f"batch {setup['batch_size']} each, the same losses "
            f"(`{' '.join(setup['train_args'])}`); {setup['held_out_images']} held-out images; EMA weights; "
            f"torch {setup['torch']}, {setup['threads']} thread{'s' if setup['threads'] != 1 else ''}."
        ),
        "",
        "Training runs (throughput as measured on a machine shared with other jobs: not comparable between runs):",
        "",
        *(
            f"- `{run['name']}` seed {run['seed']} ({run['description']}): {run['steps']} steps, "
            f"{run['train_images_per_second']:.1f} images/s: `{run['command']}`"
            for run in results["runs"]
        ),
        "",
        "## Summary",
        "",
        *summary_lines(evaluations, amplitudes),
        "",
        "## Over seeds",
        "",
        (
            f"Mean ± standard deviation over each model's seeds (the `seeds` column; {results['seed_counts']} per "
            "model; one seed: no spread) of the held-out means. The tables below give the mean over the seeds of every "
            "figure."
        ),
        "",
        *seed_table(results["over_seeds"], amplitudes),
        "",
        "## Deterministic reconstruction (Table 6 analogue)",
        "",
        "Mean +- standard deviation over held-out images (averaged over seeds); no noise at evaluation.",
        "",
        "| model | LPIPS-alex | SSIM | PSNR (dB) |",
        "|---|---|---|---|",
        *(
            f"| {label} | {fmt(e['deterministic']['lpips'], 4)} | {fmt(e['deterministic']['ssim'], 4)} | "
            f"{fmt(e['deterministic']['psnr'], 2)} |"
            for label, e in evaluations.items()
        ),
        *(
            f"| paper, LSUN-Church 32x32x4, {name} | {v['lpips'][0]:.2f} +- {v['lpips'][1]:.2f} | "
            f"{v['ssim'][0]:.2f} +- {v['ssim'][1]:.2f} | {v['psnr'][0]:.2f} +- {v['psnr'][1]:.2f} |"
            for name, v in PAPER_TABLE_6.items()
        ),
        "",
        "## Perturbed key codes",
        "",
        (
            'Codes `z + a/(2 r_max) * U(-1, 1)` per key code, and `z + N(0, (1/(4 r_max))^2)` ("Gaussian", the '
            "training noise of relaxed precision), clipped to [0, 1]; same draws for every model. Cells: the mean over "
            "held-out images, then in brackets the paired change from the model's own unperturbed decode ± its standard "
            "error. The paper claims robustness for a <= 1."
        ),
        "",
        "| model | " + " | ".join(f"a = {a:g}" for a in amplitudes) + " | Gaussian |",
        "|---|" + "---|" * (len(amplitudes) + 1),
    ]
    names = [f"uniform_{a:g}" for a in amplitudes] + ["gaussian"]
    for label, e in evaluations.items():
        cells = [
            cell(e["perturbed"][n]["psnr"], 2) if n != "uniform_0" else f"{e['perturbed'][n]['psnr']['mean']:.2f}"
            for n in names
        ]
        lines.append(f"| {label}, PSNR (dB) | " + " | ".join(cells) + " |")
    for label, e in evaluations.items():
        cells = [
            cell(e["perturbed"][n]["lpips"], 4) if n != "uniform_0" else f"{e['perturbed'][n]['lpips']['mean']:.4f}"
            for n in names
        ]
        lines.append(f"| {label}, LPIPS-alex | " + " | ".join(cells) + " |")
    if results.get("kl_sigma"):
        lines += [
            "",
            "## KL variant: posterior sigma",
            "",
            (
                f"The KL model's lowest seed ({results['kl_sigma_seed']}), over every key-code element; `sigma` is the "
                "posterior's standard deviation before the sigmoid, "
                "`sigma * z (1 - z)` its first-order size on the key code. Paper (supplementary D.1, 5,000 training "
                f"images): sigma = {PAPER_KL_SIGMA[0]:.3g} +- {PAPER_KL_SIGMA[1]:.2g}."
            ),
            "",
            (
                "| split | elements | sigma mean +- std | sigma 10% / 50% / 90% | on the code: mean +- std | "
                f"on the code: 10% / 50% / 90% | share above 1/(4 r_max) = {1 / (4 * r_max):.2e} |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for split, s in results["kl_sigma"].items():
            lines.append(
                f"| {split} | {s['elements']} | {s['sigma_mean']:.3g} +- {s['sigma_std']:.3g} | "
                f"{s['sigma_p10']:.3g} / {s['sigma_median']:.3g} / {s['sigma_p90']:.3g} | "
                f"{s['code_sigma_mean']:.3g} +- {s['code_sigma_std']:.3g} | "
                f"{s['code_sigma_p10']:.3g} / {s['code_sigma_median']:.3g} / {s['code_sigma_p90']:.3g} | "
                f"{100 * s['share_code_sigma_above_relaxed']:.1f}% |"
            )
    if has_plot:
        lines += ["", "![PSNR and LPIPS against the perturbation amplitude](psnr_vs_perturbation.png)"]
    return lines


HEADLINE_AMPLITUDES = (1.0, 2.0)  # the PSNR changes of the seed table: the paper's bound, and twice it


def mean_of(trees: list):
    """The element-wise mean of nested dicts (or lists) of numbers of one structure (an evaluation per seed)."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: mean_of([tree[key] for tree in trees]) for key in first}
    if isinstance(first, list):
        return [mean_of(list(values)) for values in zip(*trees)]
    return sum(trees) / len(trees) if isinstance(first, (int, float)) else first


def over_seeds(runs: dict[str, dict[int, dict]], amplitudes: list[float]) -> dict[str, dict]:
    """Per evaluation label: its seeds and the `spread` over them of the deterministic PSNR / SSIM / LPIPS means and
    the mean PSNR change at `HEADLINE_AMPLITUDES`."""
    table: dict[str, dict] = {}
    for by_seed in runs.values():
        for seed, result in by_seed.items():
            for label, e in result["evaluations"].items():
                row = table.setdefault(label, {"seeds": [], "values": {}})
                row["seeds"].append(seed)
                values = {key: e["deterministic"][key]["mean"] for key in ("psnr", "ssim", "lpips")}
                values.update(
                    {
                        f"psnr_change_{a:g}": e["perturbed"][f"uniform_{a:g}"]["psnr"]["delta"]
                        for a in HEADLINE_AMPLITUDES
                        if a in amplitudes
                    }
                )
                for key, value in values.items():
                    row["values"].setdefault(key, []).append(value)
    return {label: {"seeds": row["seeds"], **{key: spread(v) for key, v in row["values"].items()}}
            for label, row in table.items()}  # fmt: skip


def seed_table(rows: dict[str, dict], amplitudes: list[float]) -> list[str]:
    shown = [a for a in HEADLINE_AMPLITUDES if a in amplitudes]
    lines = [
        "| model | seeds | PSNR (dB) | SSIM | LPIPS-alex | "
        + " | ".join(f"PSNR change, a = {a:g}" for a in shown)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(shown),
    ]
    for label, row in rows.items():
        changes = " | ".join(f"{show(row[f'psnr_change_{a:g}'], 2)} dB" for a in shown)
        lines.append(
            f"| {label} | {seeds_text(row['seeds'])} | {show(row['psnr'], 2)} | "
            f"{show(row['ssim'], 4)} | {show(row['lpips'], 4)} | {changes} |"
        )
    return lines


def write_report(output: Path, command: str, runs: dict[str, dict[int, dict]], amplitudes: list[float]) -> dict:
    """Writes ``results.json``, ``report.md`` and the plot of ``runs`` (``{variant: {seed: result}}``) into
    ``output``; returns the results."""
    first = next(iter(next(iter(runs.values())).values()))
    labels = [label for by_seed in runs.values() for label in next(iter(by_seed.values()))["evaluations"]]
    evaluations = {label: mean_of([r["evaluations"][label] for by_seed in runs.values() for r in by_seed.values()
                                   if label in r["evaluations"]]) for label in labels}  # fmt: skip
    kl = runs.get("kl")
    results = {
        "command": command, "setup": first["setup"],
        "runs": [result["run"] for by_seed in runs.values() for result in by_seed.values()],
        "seed_counts": " or ".join(map(str, sorted({len(by_seed) for by_seed in runs.values()}))),
        "over_seeds": over_seeds(runs, amplitudes), "evaluations": evaluations,
        "kl_sigma": kl[min(kl)]["kl_sigma"] if kl else {}, "kl_sigma_seed": min(kl) if kl else None,
        "paper": {"table_6": PAPER_TABLE_6, "kl_sigma_mean_std": PAPER_KL_SIGMA},
    }  # fmt: skip
    (output / "results.json").write_text(json.dumps(results, indent=2))
    has_plot = plot(results, amplitudes, output / "psnr_vs_perturbation.png")
    (output / "report.md").write_text("\n".join(report_lines(results, amplitudes, has_plot)) + "\n")
    return results
