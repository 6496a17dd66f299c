"""Relaxed precision (paper section 3.4, Table 6, supplementary D): does noise on the key codes hurt reconstruction?

Trains three autoencoders (``--models``, default all three) with ``examples/train_brics_ae.py`` on the same data, seed, batch, losses and step budget:

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

Each variant and seed is one run in ``OUTPUT/runs/<variant>-seed<k>`` (the training's output folder; git-ignored
but for the run's records, see ``seeded_runs.py``): its ``result.json`` is written when the run ends, and a run that
has one is not run again; an interrupted training resumes from its last checkpoint. After the runs (or alone, with
``--report``), the report is assembled from every run there: ``results.json``, ``report.md`` (the command at its
top) and ``psnr_vs_perturbation.png`` in ``--output``, each figure the mean over a model's seeds, and the headline
figures' mean ± standard deviation over seeds. A run takes about 10 minutes on one CPU core at the defaults (1,000
steps of batch 16, the budget of ``compare_autoencoders.py``; the KL variant a little longer: it is also evaluated
from sampled codes).

    python benchmarks/relaxed_precision_benchmark.py --models kl --seeds 0      # one run, 1,000 steps, batch 16
    python benchmarks/relaxed_precision_benchmark.py --seeds 0,1,2             # the three variants, three seeds
    python benchmarks/relaxed_precision_benchmark.py --report                  # the report of the runs there
    python benchmarks/relaxed_precision_benchmark.py --steps 2000 --output /tmp/rp2000 -- --perceptual_weight 5
    python benchmarks/relaxed_precision_benchmark.py --tiny --output /tmp/rp   # seconds: a smoke test

Arguments after ``--`` go to every training run (they replace the default L2-only losses below). Model differences
of a few tenths of a dB at the same amplitude are within what another seed can change (the seed table shows how
much); the paired differences within a model (robustness to perturbation) are much tighter.
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

from benchmark_runs import ROOT, RESULTS, split_argv  # beside this script
from relaxed_precision_report import write_report
from seeded_runs import add_run_arguments, check_same, chosen_models, collect, pending_runs, resume_flags
from seeded_runs import TrainingBudget, save_result, training_environment, training_finished
from train_ae_benchmark import script_data

DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2"]
DEFAULT_AMPLITUDES = "0,0.125,0.25,0.5,1,2"
KL_WEIGHT = 1e-6  # paper supplementary A.4
EVAL_BATCH = 64
# name -> (description, config overrides, extra training flags)
VARIANTS = {
    "relaxed": ("relaxed precision on (default)", {}, []),
    "no_noise": ("relaxed precision off", {"relaxed_precision": False}, []),
    "kl": (f"KL-regularised key codes (weight {KL_WEIGHT:g}), no relaxed precision",
           {"kl_key_codes": True, "relaxed_precision": False}, ["--kl_weight", str(KL_WEIGHT)]),
}
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


def parse_amplitudes(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated amplitudes >= 0, got {text!r}")
    return sorted(set(values) | {0.0})


LABELS = {"relaxed": "relaxed precision", "no_noise": "no relaxed precision", "kl": "KL, mean codes"}
SETUP_KEYS = ("preset", "steps", "batch_size", "train_args", "amplitudes", "noise_seed", "held_out_images")


def run_one(name: str, seed: int, folder: Path, args, extra: list[str], command: str, budget: TrainingBudget) -> None:
    """Train (or resume) one variant with one seed within ``budget``, evaluate it on the held-out split, write its
    ``result.json``; a training the budget stopped is left to be continued."""
    description, overrides, flags = VARIANTS[name]
    config = write_model_config(args.preset, overrides, folder / "model_config")
    train_command = [
        sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--model_config_name_or_path", str(config),
        "--output_dir", str(folder), "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--seed", str(seed),
        "--validation_steps", "100000000", *resume_flags(args.steps), "--report_to", "none",
        "--no-eval_with_noise", "--eval_batch_size", str(EVAL_BATCH), "--num_validation_images", "4",
        *(["--max_eval_images", str(args.max_eval_images)] if args.max_eval_images else []), *extra, *flags,
    ]  # fmt: skip
    if training_finished(folder, args.steps):
        print(f"[relaxed_precision] {name} seed {seed}: trained, evaluating", flush=True)
        shown = (folder / "benchmark_command.txt").read_text().strip()
    else:
        shown = budget.train(train_command, folder, args.steps, f"{name} seed {seed}")
        if shown is None:
            return
    metrics = json.loads((folder / "metrics.json").read_text())
    model = BRICSAutoencoder.from_pretrained(folder / "autoencoder").eval()
    train_set, held_out, column, resolution = script_data(train_command[2:], model.config.sample_size)
    images = load_images(held_out, column, resolution, args.max_eval_images)
    r_max = float(model.config.grid_max_resolution)
    codes, mu, sigma = encode_all(model, images, EVAL_BATCH)
    print(f"evaluating {LABELS[name]}, seed {seed}", flush=True)
    evaluations = {LABELS[name]: robustness(model, codes, images, args.amplitudes, args.noise_seed, EVAL_BATCH)}
    kl_sigma = {}
    if name == "kl":
        sampled = encode_all(model, images, EVAL_BATCH, sample=True, seed=args.noise_seed)[0]
        print("evaluating KL, sampled codes", flush=True)
        evaluations["KL, sampled codes"] = robustness(model, sampled, images, args.amplitudes, args.noise_seed,
                                                      EVAL_BATCH)
        train_images = load_images(train_set, column, resolution, args.max_eval_images)
        _, train_mu, train_sigma = encode_all(model, train_images, EVAL_BATCH)
        kl_sigma = {f"training ({len(train_images)} images)": sigma_statistics(train_sigma, train_mu, r_max),
                    f"held-out ({len(images)} images)": sigma_statistics(sigma, mu, r_max)}
    setup = {
        "preset": args.preset, "sample_size": model.config.sample_size, "latent_size": model.config.latent_size,
        "latent_channels": model.latent_channels, "r_max": r_max, "steps": args.steps,
        "batch_size": args.batch_size, "noise_seed": args.noise_seed, "train_args": extra,
        "kl_weight": KL_WEIGHT, "amplitudes": args.amplitudes, "held_out_images": len(images),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    run = {"name": name, "seed": seed, "description": description, "command": shown, "steps": metrics["step"],
           "train_seconds": metrics.get("train_seconds"),
           "train_images_per_second": metrics.get("train_images_per_second", float("nan")),
           **training_environment(metrics),
           "config": {k: model.config[k] for k in ("relaxed_precision", "kl_key_codes")}}  # fmt: skip
    save_result(folder, {"setup": setup, "benchmark_command": command, "run": run, "evaluations": evaluations,
                         "kl_sigma": kl_sigma})
    print(f"[relaxed_precision] {name} seed {seed}: saved {folder / 'result.json'}", flush=True)


def main() -> dict:
    argv, extra = split_argv(DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every run (default 1000)")
    parser.add_argument("--batch_size", type=int, default=16, help="the small-image recipe's batch (default 16)")
    parser.add_argument("--preset", default="small-32", choices=sorted(PRESETS))
    add_run_arguments(parser, tuple(VARIANTS), tuple(VARIANTS))
    parser.add_argument("--amplitudes", type=parse_amplitudes, default=parse_amplitudes(DEFAULT_AMPLITUDES),
                        help=f"uniform amplitudes a, in units of 1/(2 r_max) (default {DEFAULT_AMPLITUDES})")
    parser.add_argument("--noise_seed", type=int, default=1234, help="seed of the perturbations and the KL sample")
    parser.add_argument("--max_eval_images", type=int, default=None, help="cap on the held-out images")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke test in seconds: preset tiny, 2 steps at batch 4, 32 held-out images")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the trainings and the evaluation (OMP_NUM_THREADS; default: PyTorch's); "
                             "on a machine shared with other jobs 1 thread can be several times faster than 2")
    parser.add_argument("--output", default=str(RESULTS / "relaxed_precision"))
    args = parser.parse_args(argv)
    try:
        models = chosen_models(args.models, tuple(VARIANTS))
    except ValueError as error:
        parser.error(str(error))
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
    if not args.report:
        budget = TrainingBudget(args.max_minutes, "relaxed_precision")
        for name, seed, folder in pending_runs(output, models, args.seeds, "relaxed_precision", budget):
            run_one(name, seed, folder, args, extra, command, budget)
        if budget.stopped:
            return {}
    runs = collect(output, tuple(VARIANTS))
    if not runs:
        raise FileNotFoundError(f"--output {str(output)!r}: no ended runs in runs/ (no runs/<variant>-seed<k>/"
                                "result.json): run some first, e.g. --models relaxed --seeds 0")
    setup = check_same(runs, SETUP_KEYS)
    results = write_report(output, command, runs, setup["amplitudes"])
    print((output / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
