"""The report of ``compare_generation.py``: each model's FID, KID and times as mean and spread over its seeds beside
the real-vs-real baseline, the goal on the means, the KID plot and the sample grids (``results.json``,
``report.md``, ``kid.png``, ``samples_<model>.png``, ``neighbours_brics.png``)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from diffusers_brics.training.unet import UNET_PRESETS

from seeded_runs import reported_lowest_seeds, require_run_files, run_folder, seeds_text, show, spread
from seeded_runs import summarize

# model key (the run's name in OUTPUT/runs) -> its name in the report
NAMES = {"brics": "BRICS key codes", "autoencoderkl": "AutoencoderKL latents", "vqmodel": "VQModel latents",
         "cvqvae": "CVQ-VAE latents", "pixels": "pixels (DDPMPipeline)"}  # fmt: skip
COLORS = {"brics": "tab:blue", "autoencoderkl": "tab:orange", "vqmodel": "tab:purple", "cvqvae": "tab:red",
          "pixels": "tab:green"}  # fmt: skip
GOAL = "BRICS generation KID no worse than the KL-latent model's"
HEADLINE = ("fid", "kid_mean", "seconds_per_image", "train_images_per_second", "train_seconds")


def goal(models: dict) -> tuple[bool, str] | None:
    """Whether BRICS's KID is no worse (not higher) than the KL-latent model's, and the figures. A row's ``kid_std``
    is the spread over seeds (``seeds`` > 1) or over KID's random subsets (one seed)."""
    brics, kl = models.get("brics"), models.get("autoencoderkl")
    if brics is None or kl is None:
        return None
    holds = brics["kid_mean"] <= kl["kid_mean"]
    difference = brics["kid_mean"] - kl["kid_mean"]
    spread_ = math.hypot(brics["kid_std"], kl["kid_std"])
    over = "seeds'" if min(brics.get("seeds", 1), kl.get("seeds", 1)) > 1 else "subsets'"
    detail = (
        f"KID {1e3 * brics['kid_mean']:.2f} ± {1e3 * brics['kid_std']:.2f} (BRICS) vs "
        f"{1e3 * kl['kid_mean']:.2f} ± {1e3 * kl['kid_std']:.2f} (AutoencoderKL), x1e3; the difference, "
        f"{1e3 * difference:+.2f}, is {'within' if abs(difference) <= spread_ else 'beyond'} the {over} "
        f"combined standard deviation ({1e3 * spread_:.2f})"
    )
    return holds, detail


def floor_comparison(models: dict) -> str | None:
    """How much of the KID gap between BRICS and the KL latents the autoencoders' floors already hold, from the
    model entries (``decoded_training_kid`` and ``kid_above_floor``); None without both floors."""
    brics, kl = models.get("brics"), models.get("autoencoderkl")
    if brics is None or kl is None or "kid_above_floor" not in brics or "kid_above_floor" not in kl:
        return None
    floors = brics["decoded_training_kid"]["mean"] - kl["decoded_training_kid"]["mean"]
    above = brics["kid_above_floor"]["mean"] - kl["kid_above_floor"]["mean"]
    return (
        f"Of the KID difference (BRICS minus KL latents, x1e3) {1e3 * (floors + above):+.2f}, the autoencoders' "
        f"floors differ by {1e3 * floors:+.2f} and stage 2's shares above them by {1e3 * above:+.2f} "
        f"({show(brics['kid_above_floor'], 2, 1e3)} vs {show(kl['kid_above_floor'], 2, 1e3)})."
    )


def preset_notes(preset: str, latent_size: int, resolution: int) -> str:
    """A remark when the preset's attention blocks apply to latents but not to pixels (none for a preset that places
    them by level, ``attention_levels``: the same levels at any size)."""
    if "attention_levels" in UNET_PRESETS[preset]:
        return ""
    attention = UNET_PRESETS[preset]["attention_resolutions"]
    levels = len(UNET_PRESETS[preset]["block_out_channels"])
    latent_levels = [latent_size // 2**level for level in range(levels)]
    pixel_levels = [resolution // 2**level for level in range(levels)]
    latent_attention = [s for s in latent_levels if s in attention] or "none"
    pixel_attention = [s for s in pixel_levels if s in attention] or "none"
    if latent_attention == pixel_attention:
        return ""
    return (
        f"Note: the `{preset}` preset puts attention where the features are {list(attention)} wide: the latent "
        f"UNets (feature sizes {latent_levels}) have it at {latent_attention}, the pixel UNet (feature sizes "
        f"{pixel_levels}) at {pixel_attention}; the pixel UNet's convolutions also run on "
        f"{(resolution // latent_size) ** 2} times as many positions."
    )


def kid_headline(entry: dict) -> dict:
    """The KID mean over seeds and its spread: over seeds for several, over KID's subsets for one."""
    kid = entry["summary"]["kid_mean"]
    only = next(iter(entry["runs"].values()))
    return {"kid_mean": kid["mean"], "kid_std": kid["std"] if kid["n"] > 1 else only["kid_std"], "seeds": kid["n"]}


def model_entry(by_seed: dict[int, dict]) -> dict:
    """One model's entry in ``results.json``: its runs, the spread over seeds, what every seed shares."""
    rows = {seed: result["row"] for seed, result in by_seed.items()}
    first = next(iter(rows.values()))
    entry = {"seeds": list(rows), "summary": summarize(rows, HEADLINE),
             **{k: first[k] for k in ("pipeline", "latent_shape", "unet_parameters", "steps", "stage1") if k in first},
             "runs": rows}  # fmt: skip
    if "scaling_factor" in first:
        entry["scaling_factor"] = spread([row["scaling_factor"] for row in rows.values()])
    if all("decoded_training" in row for row in rows.values()):
        entry["decoded_training_kid"] = spread([row["decoded_training"]["kid_mean"] for row in rows.values()])
        entry["kid_above_floor"] = spread(
            [row["kid_mean"] - row["decoded_training"]["kid_mean"] for row in rows.values()]
        )
    return entry


def plot_kid(results: dict, path: Path) -> bool:
    """Bars: KID mean over seeds, error bars its spread; the real-vs-real baseline as a band."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    models, baseline = results["models"], results["baseline"]
    heads = [kid_headline(entry) for entry in models.values()]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(
        [NAMES[key] for key in models],
        [1e3 * h["kid_mean"] for h in heads],
        yerr=[1e3 * h["kid_std"] for h in heads],
        capsize=4,
        color=[COLORS[key] for key in models],
    )
    floors = [
        (i, 1e3 * entry["decoded_training_kid"]["mean"])
        for i, entry in enumerate(models.values())
        if "decoded_training_kid" in entry
    ]
    if floors:
        ax.hlines(
            [f for _, f in floors],
            [i - 0.4 for i, _ in floors],
            [i + 0.4 for i, _ in floors],
            colors="black",
            linewidth=2,
            label="floor: training images through the autoencoder",
        )
    mean, std = 1e3 * baseline["kid_mean"]["mean"], 1e3 * baseline["kid_std"]["mean"]
    ax.axhline(mean, color="0.3", linestyle="--", label="real vs real (training images)")
    ax.axhspan(mean - std, mean + std, color="0.85", zorder=0)
    ax.set_ylabel("KID x 1e3 (lower is better)")
    ax.set_title(
        f"{results['setup']['num_samples']} samples per seed; {results['setup']['steps']} steps each; "
        "error bars: std over seeds (one seed: over KID subsets)",
        fontsize=8,
    )
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    ax.set_ylim(0, 1.3 * max(1e3 * (h["kid_mean"] + h["kid_std"]) for h in heads))  # room for the legend
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def report(results: dict, has_plot: bool) -> str:
    """``report.md``."""
    setup, baseline, models = results["setup"], results["baseline"], results["models"]
    fid = setup["fid"]
    real = (f"{show(baseline['fid'], 1)} / " if fid else "") + show(baseline["kid_mean"], 2, 1e3)
    counts = sorted({len(entry["seeds"]) for entry in models.values()})
    lines = [
        "# Equal-budget generation: diffusion on BRICS key codes vs the latents of diffusers' autoencoders vs pixels",
        "", "```", results["command"], "```", "",
        (f"Embedded {setup['resolution']}x{setup['resolution']} emoji. One UNet preset (`{setup['unet_preset']}`) "
         f"trained by `examples/train_brics_diffusion.py` on each space with the same {setup['steps']} steps at batch "
         f"{setup['batch_size']}, learning rate {setup['learning_rate']:g} (cosine, {setup['lr_warmup_steps']} warm-up "
         "steps), the stage-2 script's other defaults for this UNet (the `short` recipe: clean-sample prediction with "
         "min-SNR-5 weighting, latents scaled to unit variance), the Chen 2023 cosine-variant noise schedule, EMA and "
         "random flips; the run's seed is its training "
         "seed and its first sampling seed. EMA weights evaluated."
         + (f" Extra training arguments: `{' '.join(setup['train_args'])}`." if setup["train_args"] else "")), "",
        (f"{setup['num_samples']} samples per run, DDIM, {setup['num_inference_steps']} steps (eta 0; the predicted "
         "clean sample clipped to the key codes' range for BRICS, unclipped for the others); FID and KID against the "
         "held-out images on the standard FID Inception-v3 features. "
         "Each figure is the mean ± standard deviation over the seeds in the `seeds` column "
         f"({' or '.join(map(str, counts))} per model); with one seed, KID's ± is the spread over its random subsets. "
         "Real vs real: as many training images (drawn by each seed) against the same held-out images."
         + ("" if fid else " FID skipped (`--no_fid`).")), "",
        ("Floor: the same training images as the real-vs-real baseline, encoded and decoded by the run's "
         "autoencoder, against the held-out images: what a stage 2 that drew the training latents themselves would "
         "score. Above floor: a run's KID minus its floor's, stage 2's share."), "",
        (f"| model | seeds | latent shape | UNet params | train steps | train images/s | FID | KID (x1e3) | "
         f"floor KID | above floor | real-vs-real {'FID / ' if fid else ''}KID | s/image |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for key, entry in models.items():
        channels, height, width = entry["latent_shape"]
        s, head = entry["summary"], kid_headline(entry)
        lines.append(
            f"| {NAMES[key]} | {seeds_text(entry['runs'])} | {height}x{width}x{channels} | "
            f"{entry['unet_parameters'] / 1e6:.2f} M | {entry['steps']} | {show(s['train_images_per_second'], 1)} | "
            f"{show(s['fid'], 1) if fid else '-'} | {1e3 * head['kid_mean']:.2f} ± {1e3 * head['kid_std']:.2f} | "
            f"{show(entry['decoded_training_kid'], 2, 1e3) if 'decoded_training_kid' in entry else '-'} | "
            f"{show(entry['kid_above_floor'], 2, 1e3) if 'kid_above_floor' in entry else '-'} | "
            f"{real} | {show(s['seconds_per_image'], 3)} |"
        )
    outcome = results.get("goal")
    if outcome is not None:
        verdict = "holds" if outcome["holds"] else "does not hold"
        lines += [
            "",
            (
                f"**{GOAL}: {verdict} at this budget** ({outcome['detail']}). A difference within the spread "
                "is no clear difference."
            ),
        ]
    if results.get("floors"):
        lines += ["", results["floors"]]
    if has_plot:
        lines += ["", "![KID of each model, with the real-vs-real baseline](kid.png)"]
    lines += ["", "## Samples", "", "The first samples of each model's lowest seed (sampling seeds in order):", ""]
    for key in models:
        lines += [f"{NAMES[key]}:", "", f"![{key} samples](samples_{key}.png)", ""]
    if results.get("neighbours"):
        lines += ["## Nearest training images of BRICS samples (paper Figure 8)", "",
                  (f"Each row: a BRICS sample (lowest seed), then its {results['neighbours']['k']} nearest training "
                   "images by LPIPS-alex, nearest first (distances in results.json). Near-copies would show "
                   "memorisation."), "",
                  "![BRICS samples and their nearest training images](neighbours_brics.png)", ""]  # fmt: skip
    lines += ["## Training runs", ""]
    for key, entry in models.items():
        for seed, row in entry["runs"].items():
            scale = f"(scaling_factor {row['scaling_factor']:.4g}) " if "scaling_factor" in row else ""
            source = f"on `{row['stage1']}` " if row.get("stage1") else ""
            lines.append(
                f"- {NAMES[key]}, seed {seed}: {row['steps']} steps in {row['train_seconds']:.0f} s {source}"
                f"{scale}`{row['command']}`"
            )
    if setup.get("unet_preset_notes"):
        lines += ["", setup["unet_preset_notes"]]
    return "\n".join(lines) + "\n"


def write_report(
    output: Path, command: str, setup: dict, runs: dict[str, dict[int, dict]], baselines: dict[int, dict]
) -> dict:
    """Writes the report of ``runs`` (``{model: {seed: result}}``) with the real-vs-real ``baselines`` of their
    seeds into ``output``; the pictures of each model's lowest seed are copied beside it. Returns the results."""
    models = {key: model_entry(by_seed) for key, by_seed in runs.items()}
    latent = next((entry["latent_shape"][1] for key, entry in models.items() if key != "pixels"), None)
    setup = {**setup, "unet_preset_notes": preset_notes(setup["unet_preset"], latent, setup["resolution"])
             if latent and "pixels" in models else ""}  # fmt: skip
    results = {"command": command, "setup": setup,
               "baseline": {**summarize(baselines, ("fid", "kid_mean", "kid_std")), "seeds": list(baselines),
                            "runs": baselines},
               "models": models, "neighbours": None}  # fmt: skip
    shown_before = reported_lowest_seeds(output)
    for key, by_seed in runs.items():
        folder = run_folder(output, key, min(by_seed))
        pictures = {"benchmark_samples.png": f"samples_{key}.png"}
        if key == "brics" and "neighbours" in models[key]["runs"][min(by_seed)]:
            pictures["benchmark_neighbours.png"] = "neighbours_brics.png"
            results["neighbours"] = models[key]["runs"][min(by_seed)]["neighbours"]
        for source, target in pictures.items():
            if (folder / source).is_file():
                shutil.copyfile(folder / source, output / target)
            elif shown_before.get(key) == min(by_seed) and (output / target).is_file():
                print(f"[compare_generation] {output / target} kept: it shows the same run, whose own is not here")
            else:
                require_run_files({key: folder}, source, f"the report there keeps its {target} while it shows the same "
                                  "lowest seed")  # fmt: skip
    outcome = goal({key: kid_headline(entry) for key, entry in models.items()})
    if outcome is not None:
        results["goal"] = {"statement": GOAL, "holds": outcome[0], "detail": outcome[1]}
    results["floors"] = floor_comparison(models)
    has_plot = plot_kid(results, output / "kid.png")
    text = report(results, has_plot)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "report.md").write_text(text)
    return results
