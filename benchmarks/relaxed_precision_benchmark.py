"""Relaxed precision (paper section 3.4, Table 6, supplementary D): does noise on the key codes hurt reconstruction?

Trains three autoencoders with ``examples/train_brics_ae.py`` on the same data, seed, batch, losses and step budget:

* ``relaxed``: relaxed precision on (the default): ``N(0, (1 / (4 r_max))^2)`` noise on the key codes in training;
* ``no_noise``: the same model built with ``relaxed_precision=False``;
* ``kl``: the KL variant (paper config c, supplementary A.4): ``z = sigmoid(mu + sigma * eps)``, KL weight 1e-6
  (averaged over a code's elements, as the release does), no relaxed-precision noise.

Then, on the held-out split, from each saved (EMA) model:

1. PSNR / SSIM / LPIPS-alex of the deterministic reconstruction (no relaxed-precision noise, the decoder's fixed
   noise inputs; the KL variant decodes its mean code ``sigmoid(mu)``): the analogue of paper Table 6;
2. PSNR and LPIPS when the key codes are perturbed before decoding, ``z + A * u`` with ``u ~ U(-1, 1)`` per key code
   and ``A = a / (2 r_max)`` for each amplitude ``a`` of ``--amplitudes``, and with Gaussian noise of standard
   deviation ``1 / (4 r_max)`` (what relaxed precision adds in training), both clipped to ``[0, 1]`` as the model
   clips its own noise. The paper claims reconstructions stay good for codes within ``+-1 / (2 r_max)``, i.e.
   ``a <= 1``. Every model gets the same draws of ``u`` (common random numbers), so differences between models and
   amplitudes are not blurred by different noise; changes are reported as paired per-image differences from the
   model's own unperturbed reconstruction, with their standard error. The KL variant is measured from its mean codes
   and from one posterior sample;
3. for the KL variant, the statistics of the posterior's ``sigma`` (before the sigmoid) over every key-code element
   of the training and held-out splits (supplementary D reports ``sigma = 8.95e-5 +- 8.0e-4`` on 5,000 training
   images), and what it amounts to on the key code itself (``sigma * z * (1 - z)``, the sigmoid's slope) beside
   the relaxed-precision ``1 / (4 r_max)``.

Writes ``results.json``, ``report.md`` (the command at its top) and ``psnr_vs_perturbation.png`` into ``--output``;
the runs themselves go to ``OUTPUT/run`` (git-ignored).

    python benchmarks/relaxed_precision_benchmark.py                    # 500 steps each, batch 32, small-32
    python benchmarks/relaxed_precision_benchmark.py --steps 2000 -- --perceptual_weight 5
    python benchmarks/relaxed_precision_benchmark.py --tiny --output /tmp/rp   # seconds: a smoke test

Arguments after ``--`` go to every training run (they replace the default L2-only losses below). One seed: model
differences of a few tenths of a dB at the same amplitude are within what another seed could change; the
paired differences within a model (robustness to perturbation) are much tighter.
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

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.metrics import lpips, psnr, ssim
from diffusers_brics.models.autoencoder_presets import PRESETS
from diffusers_brics.training.data import image_transform

from benchmark_runs import ROOT, fresh_run_dir, run_shown, split_argv  # beside this script
from train_ae_benchmark import script_data

DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2"]
DEFAULT_AMPLITUDES = "0,0.125,0.25,0.5,1,2"
KL_WEIGHT = 1e-6  # paper supplementary A.4
# name -> (description, config overrides, extra training flags)
VARIANTS = {
    "relaxed": ("relaxed precision on (default)", {}, []),
    "no_noise": ("relaxed precision off", {"relaxed_precision": False}, []),
    "kl": (f"KL-regularised key codes (weight {KL_WEIGHT:g}), no relaxed precision",
           {"kl_key_codes": True, "relaxed_precision": False}, ["--kl_weight", str(KL_WEIGHT)]),
}
PAPER_TABLE_6 = {  # LSUN-Church 256^2, 32x32x4 codes, 800k images: mean +- std over validation images
    "w/o noise": {"lpips": (0.12, 0.07), "ssim": (0.67, 0.21), "psnr": (22.29, 6.14)},
    "with noise": {"lpips": (0.11, 0.07), "ssim": (0.68, 0.20), "psnr": (22.45, 5.98)},
}
PAPER_KL_SIGMA = (8.95e-5, 8.0e-4)  # supplementary D.1: mean +- std of sigma over 5,000 training images


def write_model_config(preset: str, overrides: dict, folder: Path) -> Path:
    """The config of ``preset`` with ``overrides``, saved as ``folder/config.json`` for ``--model_config_name_or_path``."""
    BRICSAutoencoder.from_config({**PRESETS[preset], **overrides}).save_config(folder)
    return folder / "config.json"


def load_images(dataset, column: str, resolution: int, limit: int | None) -> torch.Tensor:
    """Centre crops of a split's images, ``(N, 3, R, R)`` in ``[-1, 1]`` (the first ``limit``, if given)."""
    transform = image_transform(resolution, center_crop=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return torch.stack([transform(dataset[i][column]) for i in range(count)])


@torch.no_grad()
def encode_all(model: BRICSAutoencoder, images: torch.Tensor, batch: int, sample: bool = False,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Key codes of ``images`` (the mean codes, or posterior samples drawn from ``seed``), and for the KL variant the
    posterior's pre-sigmoid ``mu`` and ``sigma``."""
    generator = torch.Generator().manual_seed(seed)
    codes, mus, sigmas = [], [], []
    for start in range(0, len(images), batch):
        out = model.encode(images[start : start + batch], sample_posterior=sample, generator=generator)
        codes.append(out.latents)
        if out.key_code_posterior is not None:
            mus.append(out.key_code_posterior.mean)
            sigmas.append(out.key_code_posterior.std)
    return torch.cat(codes), (torch.cat(mus) if mus else None), (torch.cat(sigmas) if sigmas else None)


@torch.no_grad()
def per_image_metrics(model: BRICSAutoencoder, codes: torch.Tensor, images: torch.Tensor, batch: int,
                      with_ssim: bool) -> dict[str, torch.Tensor]:
    """Per-image PSNR, LPIPS-alex (and SSIM) of the deterministic decode of ``codes`` against ``images``."""
    out: dict[str, list[torch.Tensor]] = {"psnr": [], "lpips": [], **({"ssim": []} if with_ssim else {})}
    for start in range(0, len(codes), batch):
        target = images[start : start + batch]
        recon = model.decode(codes[start : start + batch], relaxed_precision=False, noise_mode="const").sample
        recon = recon.clamp(-1, 1)
        out["psnr"].append(psnr(recon, target))
        out["lpips"].append(lpips(recon, target, net="alex"))
        if with_ssim:
            out["ssim"].append(ssim(recon, target))
    return {name: torch.cat(values).double() for name, values in out.items()}


def summary(values: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation over images."""
    return {"mean": values.mean().item(), "std": values.std().item() if len(values) > 1 else 0.0}


def paired(values: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and paired difference (with its standard error) from the reference, over images."""
    diff = values - reference
    se = diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    return {**summary(values), "delta": diff.mean().item(), "delta_se": se}


def perturbations(codes: torch.Tensor, r_max: float, amplitudes: list[float], seed: int) -> dict[str, torch.Tensor]:
    """The perturbed codes: ``uniform_<a>`` for each amplitude (``a / (2 r_max) * U(-1, 1)``) and ``gaussian``
    (``N(0, (1 / (4 r_max))^2)``), clipped to ``[0, 1]``. The draws depend only on ``seed`` and the codes' shape."""
    generator = torch.Generator().manual_seed(seed)
    unit_uniform = torch.rand(codes.shape, generator=generator, dtype=torch.float64) * 2 - 1
    unit_normal = torch.randn(codes.shape, generator=generator, dtype=torch.float64)
    out = {}
    for a in amplitudes:
        out[f"uniform_{a:g}"] = (codes.double() + a / (2 * r_max) * unit_uniform).clamp(0, 1).to(codes.dtype)
    out["gaussian"] = (codes.double() + unit_normal / (4 * r_max)).clamp(0, 1).to(codes.dtype)
    return out


def robustness(model: BRICSAutoencoder, codes: torch.Tensor, images: torch.Tensor, amplitudes: list[float],
               seed: int, batch: int) -> dict:
    """Deterministic metrics of ``codes`` (mean +- std over images) and PSNR / LPIPS under each perturbation."""
    r_max = model.config.grid_max_resolution
    clean = per_image_metrics(model, codes, images, batch, with_ssim=True)
    rows = {}
    for name, perturbed in perturbations(codes, r_max, amplitudes, seed).items():
        m = per_image_metrics(model, perturbed, images, batch, with_ssim=False)
        rows[name] = {key: paired(m[key], clean[key]) for key in ("psnr", "lpips")}
    return {"deterministic": {key: summary(values) for key, values in clean.items()}, "perturbed": rows}


def sigma_statistics(sigma: torch.Tensor, mu: torch.Tensor, r_max: float) -> dict[str, float]:
    """The KL posterior's pre-sigmoid sigma over all key-code elements (mean, std, quantiles) and its size on the
    key code, ``sigma * s(mu) * (1 - s(mu))`` (first order), beside the relaxed-precision ``1 / (4 r_max)``."""
    sigma, code_sigma = sigma.double().flatten(), (sigma * torch.sigmoid(mu) * (1 - torch.sigmoid(mu))).double().flatten()
    quantiles = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)

    def q(values):  # torch.quantile refuses very large inputs: take an even subsample
        step = max(1, len(values) // 1_000_000)
        return torch.quantile(values[::step], quantiles).tolist()

    relaxed = 1 / (4 * r_max)
    return {
        "elements": len(sigma),
        "sigma_mean": sigma.mean().item(), "sigma_std": sigma.std().item(),
        **dict(zip(("sigma_p10", "sigma_median", "sigma_p90"), q(sigma))),
        "code_sigma_mean": code_sigma.mean().item(), "code_sigma_std": code_sigma.std().item(),
        **dict(zip(("code_sigma_p10", "code_sigma_median", "code_sigma_p90"), q(code_sigma))),
        "relaxed_precision_std": relaxed,
        "share_code_sigma_above_relaxed": (code_sigma > relaxed).double().mean().item(),
    }


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
            ax.plot([gaussian_x], [entry["perturbed"]["gaussian"][key]["mean"]], marker="*", markersize=12,
                    color=color, linestyle="none")
    for ax, name in zip(axes, ("held-out PSNR (dB)", "held-out LPIPS-alex")):
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.set_xlabel("uniform perturbation amplitude a, in units of 1/(2 r_max)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_title("PSNR under key-code perturbation")
    axes[1].set_title("LPIPS-alex under key-code perturbation")
    axes[0].legend(fontsize=8)
    fig.text(0.5, 0.005, "dots: uniform noise a/(2 r_max) * U(-1, 1); stars: Gaussian noise of std 1/(4 r_max), "
             "placed at the uniform amplitude of equal std; shaded: the paper's +-1/(2 r_max)", ha="center",
             fontsize=8)
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
        worst = {label: min(e["perturbed"][f"uniform_{a:g}"]["psnr"]["delta"] for a in inside)
                 for label, e in evaluations.items()}
        lines.append("Within the paper's interval (0 < a <= 1), the largest mean PSNR change per model: "
                     + "; ".join(f"{label} {value:+.2f} dB" for label, value in worst.items()) + ".")
    outside = [a for a in amplitudes if a > 1]
    if outside:
        lines.append(f"Beyond it (a = {outside[-1]:g}): "
                     + "; ".join(f"{label} {e['perturbed'][f'uniform_{outside[-1]:g}']['psnr']['delta']:+.2f} dB"
                                 for label, e in evaluations.items()) + ".")
    if {"relaxed precision", "no relaxed precision"} <= set(evaluations):
        on, off = (evaluations[k]["deterministic"] for k in ("relaxed precision", "no relaxed precision"))
        lines.append("Relaxed precision on minus off, deterministic decode: PSNR "
                     f"{on['psnr']['mean'] - off['psnr']['mean']:+.2f} dB, SSIM {on['ssim']['mean'] - off['ssim']['mean']:+.4f}, LPIPS "
                     f"{on['lpips']['mean'] - off['lpips']['mean']:+.4f} (paper Table 6: +0.16 dB, +0.01, -0.01).")
    return [" ".join(lines)] if lines else []


def report_lines(results: dict, amplitudes: list[float], has_plot: bool) -> list[str]:
    setup, evaluations = results["setup"], results["evaluations"]
    r_max = setup["r_max"]
    lines = [
        "# Relaxed precision: reconstruction with and without key-code noise (paper Table 6, supplementary D)",
        "",
        f"`{results['command']}`",
        "",
        (f"Preset `{setup['preset']}` ({setup['sample_size']}x{setup['sample_size']}, key codes "
         f"{setup['latent_size']}x{setup['latent_size']}x{setup['latent_channels']}, r_max = {r_max:g}, so "
         f"1/(2 r_max) = {1 / (2 * r_max):.5f} and 1/(4 r_max) = {1 / (4 * r_max):.5f}); {setup['steps']} steps at "
         f"batch {setup['batch_size']} each, seed {setup['seed']}, the same losses "
         f"(`{' '.join(setup['train_args'])}`); {setup['held_out_images']} held-out images; EMA weights; "
         f"torch {setup['torch']}, {setup['threads']} thread{'s' if setup['threads'] != 1 else ''}."),
        "",
        "Training runs (throughput as measured on a machine shared with other jobs: not comparable between runs):",
        "",
        *(f"- `{run['name']}` ({run['description']}): {run['steps']} steps, {run['train_images_per_second']:.1f} "
          f"images/s: `{run['command']}`" for run in results["runs"]),
        "",
        "## Summary",
        "",
        *summary_lines(evaluations, amplitudes),
        "",
        "## Deterministic reconstruction (Table 6 analogue)",
        "",
        "Mean +- standard deviation over held-out images; no noise at evaluation.",
        "",
        "| model | LPIPS-alex | SSIM | PSNR (dB) |",
        "|---|---|---|---|",
        *(f"| {label} | {fmt(e['deterministic']['lpips'], 4)} | {fmt(e['deterministic']['ssim'], 4)} | "
          f"{fmt(e['deterministic']['psnr'], 2)} |" for label, e in evaluations.items()),
        *(f"| paper, LSUN-Church 32x32x4, {name} | {v['lpips'][0]:.2f} +- {v['lpips'][1]:.2f} | "
          f"{v['ssim'][0]:.2f} +- {v['ssim'][1]:.2f} | {v['psnr'][0]:.2f} +- {v['psnr'][1]:.2f} |"
          for name, v in PAPER_TABLE_6.items()),
        "",
        "## Perturbed key codes",
        "",
        ("Codes `z + a/(2 r_max) * U(-1, 1)` per key code, and `z + N(0, (1/(4 r_max))^2)` (\"Gaussian\", the "
         "training noise of relaxed precision), clipped to [0, 1]; same draws for every model. Cells: the mean over "
         "held-out images, then in brackets the paired change from the model's own unperturbed decode ± its standard "
         "error. The paper claims robustness for a <= 1."),
        "",
        "| model | " + " | ".join(f"a = {a:g}" for a in amplitudes) + " | Gaussian |",
        "|---|" + "---|" * (len(amplitudes) + 1),
    ]
    names = [f"uniform_{a:g}" for a in amplitudes] + ["gaussian"]
    for label, e in evaluations.items():
        cells = [cell(e["perturbed"][n]["psnr"], 2) if n != "uniform_0" else f"{e['perturbed'][n]['psnr']['mean']:.2f}"
                 for n in names]
        lines.append(f"| {label}, PSNR (dB) | " + " | ".join(cells) + " |")
    for label, e in evaluations.items():
        cells = [cell(e["perturbed"][n]["lpips"], 4) if n != "uniform_0" else f"{e['perturbed'][n]['lpips']['mean']:.4f}"
                 for n in names]
        lines.append(f"| {label}, LPIPS-alex | " + " | ".join(cells) + " |")
    if "kl_sigma" in results:
        lines += [
            "",
            "## KL variant: posterior sigma",
            "",
            ("Over every key-code element; `sigma` is the posterior's standard deviation before the sigmoid, "
             "`sigma * z (1 - z)` its first-order size on the key code. Paper (supplementary D.1, 5,000 training "
             f"images): sigma = {PAPER_KL_SIGMA[0]:.3g} +- {PAPER_KL_SIGMA[1]:.2g}."),
            "",
            ("| split | elements | sigma mean +- std | sigma 10% / 50% / 90% | on the code: mean +- std | "
             f"on the code: 10% / 50% / 90% | share above 1/(4 r_max) = {1 / (4 * r_max):.2e} |"),
            "|---|---|---|---|---|---|---|",
        ]
        for split, s in results["kl_sigma"].items():
            lines.append(
                f"| {split} | {s['elements']} | {s['sigma_mean']:.3g} +- {s['sigma_std']:.3g} | "
                f"{s['sigma_p10']:.3g} / {s['sigma_median']:.3g} / {s['sigma_p90']:.3g} | "
                f"{s['code_sigma_mean']:.3g} +- {s['code_sigma_std']:.3g} | "
                f"{s['code_sigma_p10']:.3g} / {s['code_sigma_median']:.3g} / {s['code_sigma_p90']:.3g} | "
                f"{100 * s['share_code_sigma_above_relaxed']:.1f}% |")
    if has_plot:
        lines += ["", "![PSNR and LPIPS against the perturbation amplitude](psnr_vs_perturbation.png)"]
    return lines


def parse_amplitudes(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated amplitudes >= 0, got {text!r}")
    return sorted(set(values) | {0.0})


def main() -> None:
    argv, extra = split_argv(DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of every model (default 500)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--preset", default="small-32", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0, help="training seed (the same for all three models)")
    parser.add_argument("--amplitudes", type=parse_amplitudes, default=parse_amplitudes(DEFAULT_AMPLITUDES),
                        help=f"uniform amplitudes a, in units of 1/(2 r_max) (default {DEFAULT_AMPLITUDES})")
    parser.add_argument("--noise_seed", type=int, default=1234, help="seed of the perturbations and the KL sample")
    parser.add_argument("--max_eval_images", type=int, default=None, help="cap on the held-out images")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke test in seconds: preset tiny, 2 steps at batch 4, 32 held-out images")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the trainings and the evaluation (OMP_NUM_THREADS; default: PyTorch's); "
                             "on a machine shared with other jobs 1 thread can be several times faster than 2")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "relaxed_precision"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.preset, args.steps, args.batch_size = "tiny", 2, 4
        args.max_eval_images = args.max_eval_images or 32
    if args.steps < 1 or args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--steps, --batch_size and --threads must be >= 1")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training processes inherit it
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])

    output = Path(args.output)
    run_dir = fresh_run_dir(output)
    eval_batch = 64
    runs, models = [], {}
    for name, (description, overrides, flags) in VARIANTS.items():
        folder = run_dir / name
        config = write_model_config(args.preset, overrides, folder / "model_config")
        train_command = [
            sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--model_config_name_or_path", str(config),
            "--output_dir", str(folder), "--train_batch_size", str(args.batch_size),
            "--max_train_steps", str(args.steps), "--seed", str(args.seed),
            "--validation_steps", "100000000", "--checkpointing_steps", "100000000", "--report_to", "none",
            "--no-eval_with_noise", "--eval_batch_size", str(eval_batch), "--num_validation_images", "4",
            *(["--max_eval_images", str(args.max_eval_images)] if args.max_eval_images else []), *extra, *flags,
        ]
        shown = run_shown(train_command)
        metrics = json.loads((folder / "metrics.json").read_text())
        models[name] = BRICSAutoencoder.from_pretrained(folder / "autoencoder").eval()
        runs.append({"name": name, "description": description, "command": shown, "steps": metrics["step"],
                     "train_seconds": metrics.get("train_seconds"),
                     "train_images_per_second": metrics.get("train_images_per_second", float("nan")),
                     "config": {k: models[name].config[k] for k in ("relaxed_precision", "kl_key_codes")}})
        print(f"trained {name}: {metrics['step']} steps", flush=True)

    first = models["relaxed"]
    train_set, held_out, column, resolution = script_data(train_command[2:], first.config.sample_size)
    images = load_images(held_out, column, resolution, args.max_eval_images)
    r_max = float(first.config.grid_max_resolution)
    evaluations, kl_sigma = {}, {}
    for name, model in models.items():
        codes, mu, sigma = encode_all(model, images, eval_batch)
        label = {"relaxed": "relaxed precision", "no_noise": "no relaxed precision", "kl": "KL, mean codes"}[name]
        print(f"evaluating {label}", flush=True)
        evaluations[label] = robustness(model, codes, images, args.amplitudes, args.noise_seed, eval_batch)
        if name == "kl":
            sampled = encode_all(model, images, eval_batch, sample=True, seed=args.noise_seed)[0]
            print("evaluating KL, sampled codes", flush=True)
            evaluations["KL, sampled codes"] = robustness(model, sampled, images, args.amplitudes, args.noise_seed,
                                                          eval_batch)
            train_images = load_images(train_set, column, resolution, args.max_eval_images)
            _, train_mu, train_sigma = encode_all(model, train_images, eval_batch)
            kl_sigma = {f"training ({len(train_images)} images)": sigma_statistics(train_sigma, train_mu, r_max),
                        f"held-out ({len(images)} images)": sigma_statistics(sigma, mu, r_max)}

    results = {
        "command": command,
        "setup": {
            "preset": args.preset, "sample_size": first.config.sample_size, "latent_size": first.config.latent_size,
            "latent_channels": first.latent_channels, "r_max": r_max, "steps": args.steps,
            "batch_size": args.batch_size, "seed": args.seed, "noise_seed": args.noise_seed, "train_args": extra,
            "kl_weight": KL_WEIGHT, "amplitudes": args.amplitudes, "held_out_images": len(images),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
        },
        "runs": runs,
        "evaluations": evaluations,
        "kl_sigma": kl_sigma,
        "paper": {"table_6": PAPER_TABLE_6, "kl_sigma_mean_std": PAPER_KL_SIGMA},
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    has_plot = plot(results, args.amplitudes, output / "psnr_vs_perturbation.png")
    lines = report_lines(results, args.amplitudes, has_plot)
    (output / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
