"""The report of ``compare_autoencoders.py``: each model's figures as mean and spread over its seeds, the goals on
the means, and the plots (``results.json``, ``report.md``, ``metrics.png``, ``usage.png``)."""

from __future__ import annotations

import json
from pathlib import Path

from seeded_runs import seeds_text, show, summarize, spread

MODEL_TYPES = ("brics", "autoencoderkl", "vqmodel", "cvqvae")
NAMES = {"brics": "BRICS", "autoencoderkl": "AutoencoderKL", "vqmodel": "VQModel", "cvqvae": "CVQ-VAE"}
VQ_TYPES = ("vqmodel", "cvqvae")
GRID_LEARNING_RATE = "1e-2"  # the BRICS grids' rate of the small-image recipe, unless the training flags set one
COLORS = {"brics": "tab:blue", "autoencoderkl": "tab:orange", "vqmodel": "tab:green", "cvqvae": "tab:red"}
HEADLINE = ("psnr", "ssim", "lpips", "fid", "kid_mean", "codebook_usage", "codebook_perplexity", "grid_usage_mean",
            "grid_usage_min_level", "grid_trained_mean")  # fmt: skip


def model_entry(by_seed: dict[int, dict], timing: dict) -> dict:
    """One model's entry in ``results.json``: its runs, the spread over seeds of the headline figures, what every
    seed shares (code, sizes, GMACs), the side-by-side timings, and for BRICS the per-level usage averaged over
    seeds."""
    rows = {seed: result["row"] for seed, result in by_seed.items()}
    first = next(iter(rows.values()))
    entry = {
        "seeds": list(rows), "summary": summarize(rows, HEADLINE),
        **{key: first[key] for key in ("code", "parameters", "decode_parameters", "decode_gmacs") if key in first},
        **timing, "runs": rows,
    }  # fmt: skip
    if "grid_usage_per_level" in first:
        for key in ("grid_usage_per_level", "grid_trained_per_level"):
            entry[key] = [spread(level)["mean"] for level in zip(*(row[key] for row in rows.values()))]
        entry["dense_levels"] = first["dense_levels"]
    return entry


def goals(models: dict) -> list[tuple[str, bool, str]]:
    """The benchmark's goals, on the means over seeds."""
    out = []
    mean = {kind: {key: stat["mean"] for key, stat in entry["summary"].items()} for kind, entry in models.items()}
    brics, kl = mean.get("brics"), mean.get("autoencoderkl")
    if brics and kl:
        out.append(
            (
                "BRICS reconstruction at least as good as AutoencoderKL's (PSNR and LPIPS)",
                brics["psnr"] >= kl["psnr"] and brics["lpips"] <= kl["lpips"],
                f"PSNR {brics['psnr']:.2f} vs {kl['psnr']:.2f} dB, LPIPS {brics['lpips']:.3f} vs {kl['lpips']:.3f}",
            )
        )
        ratio = models["brics"]["decode_gmacs"] / models["autoencoderkl"]["decode_gmacs"]
        out.append(("BRICS decode under half of AutoencoderKL's GMACs", ratio < 0.5, f"{ratio:.2f}x"))
    for kind in VQ_TYPES:
        if brics and kind in mean:
            dense = models["brics"]["grid_usage_per_level"][: models["brics"]["dense_levels"]]
            used = mean[kind]["codebook_usage"]
            out.append(
                (
                    f"dense-level grid usage above the {NAMES[kind]} codebook's",
                    min(dense) > used,
                    f"dense levels {min(dense):.0%}–{max(dense):.0%} vs codebook {used:.0%}",
                )
            )
    return out


def usage_cell(kind: str, entry: dict) -> str:
    summary = entry["summary"]
    if kind == "brics":
        levels = entry["grid_usage_per_level"]
        return f"grid levels {min(levels):.0%}–{max(levels):.0%} read"
    if kind in VQ_TYPES:
        return (
            f"codebook {show(summary['codebook_usage'], 1, 100)}% selected (perplexity "
            f"{show(summary['codebook_perplexity'], 1)})"
        )
    return "-"


def grid_learning_rate(train_args: str) -> str:
    """The BRICS grids' learning rate of a run: the last ``--grid_learning_rate`` of its training flags, else the
    recipe's."""
    flags = train_args.split()
    given = [flags[i + 1] for i, flag in enumerate(flags[:-1]) if flag == "--grid_learning_rate"]
    return given[-1] if given else GRID_LEARNING_RATE


def report(results: dict) -> str:
    """``report.md``."""
    setup, models = results["setup"], results["models"]
    seed_counts = sorted({len(entry["seeds"]) for entry in models.values()})
    lines = [
        "# Equal-budget reconstruction: BRICS vs AutoencoderKL vs VQModel vs CVQ-VAE", "",
        "```", results["command"], "```", "",
        (f"Embedded 32x32 emoji (preset `{setup['preset']}`), held-out split; {setup['steps']} steps at batch "
         f"{setup['batch_size']} for each model, the same losses ({setup['train_args']}) plus each model's own term "
         f"(BRICS grids: learning rate {grid_learning_rate(setup['train_args'])}). Each figure is the mean ± "
         "standard deviation over the seeds in the "
         f"`seeds` column ({' or '.join(map(str, seed_counts))} per model; one seed: no spread). FID and KID compare "
         "the reconstructions with the originals. Timings: the lowest seed's model of each kind, medians taken side "
         f"by side in the process that assembled this report (torch {results['torch']}, {results['threads']} "
         "threads)."), "",
        "| model | seeds | code | parameters | decode params | decode GMACs/img | decode ms/img (batch 64) | train step s "
        "(batch) | PSNR | SSIM | LPIPS | FID | KID (x1e3) | usage |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for kind, entry in models.items():
        s = entry["summary"]
        fid = show(s["fid"], 1) if "fid" in s else "-"
        kid = show(s["kid_mean"], 1, 1e3) if "kid_mean" in s else "-"
        lines.append(
            f"| {NAMES[kind]} | {seeds_text(entry['runs'])} | {entry['code']} | {entry['parameters'] / 1e6:.2f} M | "
            f"{entry['decode_parameters'] / 1e6:.2f} M | {entry['decode_gmacs']:.3f} | "
            f"{1e3 * entry['decode_seconds_per_image']:.2f} | {entry['train_step_seconds']:.3f} | {show(s['psnr'], 2)} | "
            f"{show(s['ssim'], 3)} | {show(s['lpips'], 3)} | {fid} | {kid} | {usage_cell(kind, entry)} |"
        )
    names = ", ".join(NAMES[kind] for kind in models)
    lines += [
        "",
        "![metrics](metrics.png)",
        "",
        "![usage](usage.png)",
        "",
        f"Held-out originals (top row), then the reconstructions of {names} (lowest seed of each):",
        "",
        "![reconstructions](reconstructions.png)",
        "",
        "## Goals",
        "",
        "On the means over seeds:",
        "",
    ]
    lines += [f"- {goal}: **{'holds' if ok else 'does not hold'}** ({detail})" for goal, ok, detail in results["goals"]]
    lines += ["", "## Runs", ""]
    for kind, entry in models.items():
        for seed, row in entry["runs"].items():
            lines.append(
                f"- {NAMES[kind]}, seed {seed}: {row['steps']} steps, PSNR {row['psnr']:.2f}: `{row['command']}`"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, output: Path) -> None:
    """``metrics.png`` (bars: mean, error bars: standard deviation over seeds) and ``usage.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    keys = [("psnr", "PSNR (dB), higher is better"), ("lpips", "LPIPS-alex, lower is better"),
            ("kid_mean", "KID of reconstructions, lower is better")]  # fmt: skip
    keys = [(k, label) for k, label in keys if all(k in entry["summary"] for entry in models.values())]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1), 3))
    for ax, (key, label) in zip(axes, keys):
        stats = [entry["summary"][key] for entry in models.values()]
        ax.bar(
            [NAMES[k] for k in models],
            [s["mean"] for s in stats],
            yerr=[s["std"] for s in stats],
            capsize=4,
            color=[COLORS[k] for k in models],
        )
        ax.set_title(label, fontsize=9)
    axes[-1].bar(
        [NAMES[k] for k in models],
        [entry["decode_gmacs"] for entry in models.values()],
        color=[COLORS[k] for k in models],
    )
    axes[-1].set_title("decode GMACs per image", fontsize=9)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    fig.savefig(output / "metrics.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.2))
    brics = models.get("brics")
    if brics is not None:
        levels = range(len(brics["grid_usage_per_level"]))
        ax.plot(levels, brics["grid_usage_per_level"], "o-", label="BRICS: reachable entries read (held-out)")
        ax.plot(levels, brics["grid_trained_per_level"], "s--", label="BRICS: entries moved by training")
    for kind in VQ_TYPES:
        if kind in models:
            used = models[kind]["summary"]["codebook_usage"]
            ax.axhline(used["mean"], color=COLORS[kind], label=f"{NAMES[kind]}: codebook entries selected (held-out)")
            ax.axhspan(used["mean"] - used["std"], used["mean"] + used["std"], color=COLORS[kind], alpha=0.15)
    ax.set_xlabel("grid level (coarse to fine)")
    ax.set_ylabel("share of entries (mean over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(output / "usage.png", dpi=120)
    plt.close(fig)


def write_report(
    output: Path,
    command: str,
    setup: dict,
    runs: dict[str, dict[int, dict]],
    timings: dict,
    torch_version: str,
    threads: int,
) -> dict:
    """Writes ``results.json``, ``report.md`` and the plots of ``runs`` (``{model: {seed: result}}``) into
    ``output``; returns the results."""
    models = {kind: model_entry(by_seed, timings[kind]) for kind, by_seed in runs.items()}
    results = {"command": command, "setup": setup, "torch": torch_version, "threads": threads, "models": models}
    results["goals"] = goals(models)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, output)
    (output / "report.md").write_text(report(results))
    return results
