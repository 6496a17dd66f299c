"""Equal-budget generation: diffusion on BRICS key codes, on the latents of diffusers' AutoencoderKL, VQModel and
CVQ-VAE (a VQModel with an online clustered codebook), and on pixels (embedded 32x32 emoji), one model and seed per run.

Trains one UNet preset (``--unet_preset``, default ``small``) with ``examples/train_brics_diffusion.py``, with the
same steps, batch, learning rate and its schedule, noise schedule, EMA and random flips, on each of (``--models``):

* ``brics``: the key codes of a BRICS autoencoder (scaled onto ``[-1, 1]``);
* ``autoencoderkl``: the latents of an AutoencoderKL (the posterior's mode), ``vqmodel`` / ``cvqvae``: those of a
  VQModel / CVQ-VAE (the encoder's output before quantisation; a CVQ-VAE is saved as a stock VQModel), each scaled by
  a ``scaling_factor`` fitted to the training latents, ``1 / std``;
* ``pixels``: the images themselves (``--autoencoder none``: pixel-space diffusion, a stock diffusers
  `DDPMPipeline`).

The autoencoders come from ``compare_autoencoders.py`` (same data, steps and seed): a run of seed ``k`` takes
``AUTOENCODERS/<model>-seed<k>`` (``--autoencoder_seed`` picks another seed), or ``AUTOENCODERS/<model>`` (a folder
of stage-1 output folders by model name), or the folder given by ``--brics``, ``--kl``, ``--vq`` or ``--cvq``.
Then, with `diffusers_brics.evaluate`, for each run: FID and KID of ``--num_samples`` samples against the whole
held-out split, beside the real-vs-real baseline (as many training images against the same held-out split, once
per seed) and, for a latent run, its floor (those training images encoded and decoded by its autoencoder: what
stage 1 alone costs; a report measures the floors that older runs lack); the sampling time per image with the same
sampler for all (DDIM, ``--num_inference_steps``, eta 0, as `load_pipeline` sets it up: the clean-sample estimate
clipped to the key codes' range for BRICS, unclipped for the other latents, which have no bound, and for pixels, as
stage 2 trains them); a grid of samples; and for BRICS a few samples beside their nearest training images by
LPIPS-alex (paper Figure 8).

Each model and seed is one run in ``OUTPUT/runs/<model>-seed<k>`` (the training's output folder; git-ignored but
for the run's records, see ``seeded_runs.py``): its ``result.json`` is written when the run ends, and a run that has
one is not run again; an interrupted training resumes from its last checkpoint. After the runs (or alone, with
``--report``), the report is assembled from every run there, with the mean and spread over seeds: ``results.json``,
``report.md`` (the command at its top), ``samples_<model>.png``, ``kid.png`` and ``neighbours_brics.png`` in
``--output``.

    python benchmarks/compare_generation.py --models cvqvae --seeds 0     # one latent run: about 10 minutes
    python benchmarks/compare_generation.py --models pixels --seeds 0 --max_minutes 50   # the pixel run, half of it
    python benchmarks/compare_generation.py --report                      # the report of the runs there
    python benchmarks/compare_generation.py --tiny --no_fid --output /tmp/gen   # the test's smoke run

Arguments after ``--`` go to every training run. At the defaults (`DEFAULT_STEPS` of batch 32, the main job's
stage-2 budget; 300 samples), on one CPU core, a latent run takes about 10 minutes (6.7 of training, the rest
sampling and Inception features); the pixel run, whose steps cost about ten times as much, about 80 minutes
(``--max_minutes`` splits a run into invocations: the same command continues it).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from diffusers_brics.pipelines.key_codes import to_pil
from diffusers_brics.pipelines.loading import load_pipeline
from diffusers_brics.evaluate import (
    InceptionDistances,
    image_batches,
    load_split,
    nearest_neighbours,
    sample_images,
    to_unit,
)
from diffusers_brics.metrics.inception import InceptionFeatures
from diffusers_brics.models import adapters
from diffusers_brics.training.unet import UNET_PRESETS

from benchmark_runs import ROOT, RESULTS, split_argv  # beside this script
from compare_generation_report import NAMES, write_report
from seeded_runs import add_run_arguments, chosen_models, collect, load_result, pending_runs, resume_flags
from seeded_runs import TrainingBudget, check_same, run_folder, save_result, training_environment
from seeded_runs import training_finished

SCRIPT = ROOT / "examples" / "train_brics_diffusion.py"
DEFAULT_AUTOENCODERS = RESULTS / "compare_autoencoders" / "runs"
# Training steps of each run by default: the main job's stage-2 budget (1,000 steps of batch 32). A latent run's
# training took 6.7 minutes on one thread (0.40 s per step on 8x8x4 latents; a pixel step costs about ten times as
# much: 4.0 s at batch 64).
DEFAULT_STEPS = 1000
MODELS = ("brics", "autoencoderkl", "vqmodel", "cvqvae", "pixels")
DEFAULT_MODELS = ("brics", "autoencoderkl", "cvqvae", "pixels")
BASELINE = "real"  # the runs of the real-vs-real baseline, OUTPUT/runs/real-seed<k>
# model -> (the class its stage-1 folder holds, the flag naming that folder)
STAGE1 = {"brics": ("brics", "--brics"), "autoencoderkl": ("autoencoderkl", "--kl"), "vqmodel": ("vqmodel", "--vq"),
          "cvqvae": ("vqmodel", "--cvq")}  # fmt: skip
SETUP_KEYS = ("unet_preset", "steps", "batch_size", "learning_rate", "lr_warmup_steps", "train_args", "resolution",
              "num_samples", "num_inference_steps", "eval_batch_size", "max_reference_images", "fid")  # fmt: skip


def stage1_model(path: Path, model_type: str, flag: str):
    """The autoencoder of a stage-1 output folder (or a model folder), checked to be a ``model_type``."""
    if not (path / "config.json").is_file() and not (path / "autoencoder" / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} holds no trained autoencoder (neither config.json nor "
                                "autoencoder/config.json): run `python benchmarks/compare_autoencoders.py` first, or "
                                f"pass {flag} PATH")
    vae = adapters.load_autoencoder(str(path))
    if adapters.model_type_of(vae) != model_type:
        raise ValueError(f"{flag} {str(path)!r} holds a {type(vae).__name__}, not a "
                         f"{adapters.AUTOENCODER_CLASSES[model_type].__name__}")
    return vae


def stage1_folder(model: str, seed: int, args) -> Path:
    """The stage-1 folder of a run: ``--brics`` / ``--kl`` / ``--vq`` / ``--cvq`` if given, else
    ``AUTOENCODERS/<model>-seed<k>`` (``k``: ``--autoencoder_seed``, default the run's seed), else
    ``AUTOENCODERS/<model>``."""
    flag = STAGE1[model][1]
    given = getattr(args, flag[2:])
    if given:
        return Path(given)
    autoencoders = Path(args.autoencoders)
    k = seed if args.autoencoder_seed is None else args.autoencoder_seed
    seeded = autoencoders / f"{model}-seed{k}"
    return seeded if seeded.is_dir() or not (autoencoders / model).is_dir() else autoencoders / model


def train(model: str, source: str, folder: Path, seed: int, args, extra: list[str], budget: TrainingBudget) -> bool:
    """Train one run with the stage-2 script (resuming from its newest checkpoint) within ``budget``; whether its
    training ended (else the budget stopped it, to be continued)."""
    command = [
        sys.executable, str(SCRIPT), "--autoencoder", source, "--output_dir", str(folder),
        "--unet_preset", args.unet_preset, "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--learning_rate", str(args.learning_rate),
        "--lr_warmup_steps", str(args.lr_warmup_steps), "--seed", str(seed), "--random_flip",
        "--validation_steps", "100000000", *resume_flags(args.steps),
        "--num_validation_images", "8", "--num_inference_steps", str(args.num_inference_steps), "--report_to", "none",
        *(["--resolution", str(args.resolution)] if source == "none" else []), *extra,
    ]  # fmt: skip
    return budget.train(command, folder, args.steps, f"{model} seed {seed}") is not None


def distances(reference: list[torch.Tensor], features: list[torch.Tensor], inception, with_fid: bool,
              seed: int, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID (unless ``with_fid`` is False) and KID between reference and other Inception features; KID's random
    subsets (of ``kid_subset_size``, capped at the smaller set) are drawn from ``seed``."""
    torch.manual_seed(seed)
    if with_fid:
        pair = InceptionDistances(inception, kid_subset_size)
        pair.features[True], pair.features[False] = reference, features
        return pair.compute()
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = torch.cat(reference), torch.cat(features)
    kid = KernelInceptionDistance(feature=torch.nn.Identity(), normalize=False,
                                  subset_size=min(kid_subset_size, len(real), len(fake)))  # as InceptionDistances
    kid.update(real, real=True)
    kid.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"kid_mean": float(kid_mean), "kid_std": float(kid_std), "real_images": len(real), "fake_images": len(fake)}


@torch.no_grad()
def features_of(inception, batches) -> list[torch.Tensor]:
    """Inception features of image batches in ``[-1, 1]``."""
    return [inception(to_unit(images)).double().cpu() for images in batches]


def grid(images: list[torch.Tensor], columns: int = 8):
    """Images ``(3, H, W)`` in ``[0, 1]`` as one grid of full rows."""
    columns = min(columns, len(images))
    rows = len(images) // columns
    return make_image_grid([to_pil(x * 2 - 1) for x in images[: rows * columns]], rows=rows, cols=columns)


def evaluate_model(name: str, folder: Path, reference: list[torch.Tensor], inception, args, seed: int,
                   keep: int) -> tuple[dict, list[torch.Tensor]]:
    """Samples of one trained model (DDIM, seeds ``seed``..): FID / KID against the reference features, seconds per
    image, the latent shape and UNet size; returns them with the first ``keep`` samples (``[0, 1]``)."""
    pipeline = load_pipeline(str(folder), "ddim")
    unet = pipeline.unet.config
    features, kept, seconds = [], [], 0.0
    start = time.perf_counter()
    for images in sample_images(pipeline, args.num_samples, args.eval_batch_size, args.num_inference_steps, seed,
                                desc=f"sampling {name}"):
        seconds += time.perf_counter() - start
        features.append(inception(images).double().cpu())
        kept += list(images[: max(0, keep - len(kept))])
        start = time.perf_counter()
    trained = json.loads((folder / "metrics.json").read_text())
    row = {
        "pipeline": type(pipeline).__name__,
        "latent_shape": [unet.in_channels, unet.sample_size, unet.sample_size],
        "unet_parameters": sum(p.numel() for p in pipeline.unet.parameters()),
        "steps": trained["step"], "train_seconds": trained["train_seconds"],
        "train_images_per_second": trained["train_images_per_second"],
        **training_environment(trained),
        "seconds_per_image": seconds / args.num_samples,
        **distances(reference, features, inception, not args.no_fid, seed),
    }
    vae = getattr(pipeline, "vae", None)
    if vae is not None:
        row["scaling_factor"] = float(vae.config.scaling_factor)
    return row, kept


class Evaluation:
    """What the runs of one invocation share: the Inception network, the held-out features and the splits."""

    def __init__(self, args):
        self.args = args
        self.inception = InceptionFeatures(args.inception_weights)
        self.held_out, self.column = load_split("held-out", args.resolution)
        self.train_set, self.train_column = load_split("train", args.resolution)
        self.reference = features_of(self.inception, image_batches(
            self.held_out, self.column, args.resolution, 64, args.max_reference_images, "held-out images"))

    def baseline(self, seed: int, output: Path) -> dict:
        """Real vs real for ``seed`` (as many training images as samples, drawn by the seed), cached in
        ``OUTPUT/runs/real-seed<k>``."""
        folder = run_folder(output, BASELINE, seed)
        cached = load_result(folder)
        if cached is not None:
            return cached["row"]
        features = features_of(self.inception, image_batches(self.baseline_images(seed), self.train_column,
                                                              self.args.resolution, 64, desc="real baseline"))
        row = distances(self.reference, features, self.inception, not self.args.no_fid, seed)
        save_result(folder, {"setup": setup_of(self.args), "row": row})
        return row

    def baseline_images(self, seed: int):
        """The real baseline's training images of ``seed``: as many as samples, drawn by the seed."""
        count = min(self.args.num_samples, len(self.train_set))
        return self.train_set.shuffle(seed=seed).select(range(count))

    @torch.no_grad()
    def decoded_training(self, model: str, seed: int, source: str) -> dict:
        """The floor of a latent space: FID / KID of the real baseline's training images of ``seed`` encoded and
        decoded by the stage-1 autoencoder at ``source`` (deterministically, as the pipeline decodes) against the
        held-out images. A stage 2 that drew the training latents themselves would score about this; what a run's
        samples score above it is stage 2's share."""
        vae = stage1_model(ROOT / source, *STAGE1[model]).eval()
        images = image_batches(self.baseline_images(seed), self.train_column, self.args.resolution, 64,
                               desc=f"decoded training images ({model})")
        decoded = (adapters.decode_latents(vae, adapters.encode_latents(vae, batch)) for batch in images)
        return distances(self.reference, features_of(self.inception, decoded), self.inception, not self.args.no_fid,
                         seed)

    def run(self, model: str, seed: int, folder: Path, source: str | None, output: Path) -> dict:
        """Evaluates one trained run: its row, ``benchmark_samples.png`` and (BRICS) ``benchmark_neighbours.png`` in ``folder``."""
        args = self.args
        self.baseline(seed, output)
        keep = max(32, args.neighbour_samples) if model == "brics" else 32
        row, kept = evaluate_model(NAMES[model], folder, self.reference, self.inception, args, seed, keep)
        shown = folder / "benchmark_command.txt"
        row.update(seed=seed, stage1=source, command=shown.read_text().strip() if shown.is_file() else None)
        if source is not None:
            row["decoded_training"] = self.decoded_training(model, seed, source)
        grid(kept[:32]).save(folder / "benchmark_samples.png")
        if model == "brics":
            samples = torch.stack(kept[: args.neighbour_samples]) * 2 - 1
            pool = 128 if args.tiny else None  # training images searched for neighbours
            lpips_distances, picture = nearest_neighbours(samples, image_batches(
                self.train_set, self.train_column, args.resolution, 64, pool, "training images"), args.k)
            picture.save(folder / "benchmark_neighbours.png")
            row["neighbours"] = {"samples": len(samples), "k": args.k, "lpips_distances": lpips_distances.tolist(),
                                 "training_images_searched": min(pool or len(self.train_set), len(self.train_set))}
        print(f"{NAMES[model]}, seed {seed}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in row.items() if k in ("fid", "kid_mean", "kid_std", "seconds_per_image")),
            flush=True)  # fmt: skip
        return row


def setup_of(args) -> dict:
    """The settings every run of one report shares."""
    return {"unet_preset": args.unet_preset, "steps": args.steps, "default_steps": DEFAULT_STEPS,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "lr_warmup_steps": args.lr_warmup_steps,
            "train_args": args.extra, "resolution": args.resolution, "num_samples": args.num_samples,
            "scheduler": "ddim", "num_inference_steps": args.num_inference_steps,
            "eval_batch_size": args.eval_batch_size, "max_reference_images": args.max_reference_images,
            "fid": not args.no_fid, "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip


def runs_args(args: argparse.Namespace, setup: dict) -> argparse.Namespace:
    """``args`` with the evaluation settings of the runs being reported (``--report`` takes them from the runs)."""
    shared = {key: setup[key] for key in ("num_samples", "resolution", "max_reference_images")}
    return argparse.Namespace(**{**vars(args), **shared, "no_fid": not setup["fid"]})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, MODELS, DEFAULT_MODELS)
    parser.add_argument("--autoencoders", default=str(DEFAULT_AUTOENCODERS),
                        help="the folder of the stage-1 runs (compare_autoencoders.py's OUTPUT/runs: <model>-seed<k>/) "
                             "or of stage-1 output folders by model name (brics/, autoencoderkl/, ...)")
    parser.add_argument("--autoencoder_seed", type=int, default=None,
                        help="the seed of the stage-1 runs to train on (default: each run's own seed)")
    parser.add_argument("--brics", help="the BRICS stage-1 output folder, for every seed")
    parser.add_argument("--kl", help="the AutoencoderKL stage-1 output folder, for every seed")
    parser.add_argument("--vq", help="the VQModel stage-1 output folder, for every seed")
    parser.add_argument("--cvq", help="the CVQ-VAE (cvqvae) stage-1 output folder, for every seed")
    parser.add_argument("--unet_preset", default="small", choices=sorted(UNET_PRESETS))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"training steps of each run (default {DEFAULT_STEPS}: about 7 minutes on latents, on "
                             "one core)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=8e-4,
                        help="the paper's rate, as train_diffusion_benchmark.py (the script's default is 8e-5)")
    parser.add_argument("--lr_warmup_steps", type=int, default=None, help="default: a tenth of --steps")
    parser.add_argument("--resolution", type=int, default=32, help="image size (the stage-1 models' sample_size)")
    parser.add_argument("--num_samples", type=int, default=300, help="samples per run for FID / KID")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps, for every model")
    parser.add_argument("--eval_batch_size", type=int, default=50, help="samples per pipeline call")
    parser.add_argument("--max_reference_images", type=int, default=None,
                        help="the first N held-out images only (default: all)")
    parser.add_argument("--neighbour_samples", type=int, default=8, help="BRICS samples in the neighbour grid")
    parser.add_argument("--k", type=int, default=5, help="nearest training images per sample")
    parser.add_argument("--no_fid", action="store_true", help="KID only (FID's 2048x2048 eigenvalues take 10-20 s "
                        "of CPU per run)")
    parser.add_argument("--inception_weights", help="a prepared FID Inception weight file (see "
                        "diffusers_brics.metrics.inception)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the trainings and the evaluation (OMP_NUM_THREADS; default: PyTorch's); "
                             "on a machine shared with other jobs 1 thread can be several times faster than 2")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke run: tiny UNets, 2 steps at batch 8, 4 samples of 2 steps, 8 held-out images")
    parser.add_argument("--output", default=str(RESULTS / "compare_generation"))
    args = parser.parse_args(argv)
    try:
        args.models = chosen_models(args.models, MODELS)
    except ValueError as error:
        parser.error(str(error))
    if args.tiny:
        args.unet_preset, args.steps, args.batch_size = "tiny", 2, 8
        args.num_samples, args.num_inference_steps, args.eval_batch_size = 4, 2, 4
        args.max_reference_images, args.neighbour_samples, args.k = args.max_reference_images or 8, 2, 2
    for name in ("steps", "batch_size", "num_samples", "num_inference_steps", "eval_batch_size", "neighbour_samples",
                 "k", "threads", "resolution"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.num_samples < 2:
        parser.error("--num_samples must be >= 2 (FID and KID need two images per set)")
    args.lr_warmup_steps = args.steps // 10 if args.lr_warmup_steps is None else args.lr_warmup_steps
    return args


def main() -> dict:
    argv, extra = split_argv([])
    args = parse_args(argv)
    args.extra = extra
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training processes inherit it
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    command = shlex.join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    if (output / "runs").resolve() == Path(args.autoencoders).resolve():
        raise ValueError(f"--output {args.output!r}: its runs/ folder is --autoencoders, where the stage-1 runs of the "
                         "same names are; choose another --output")
    evaluation = None
    if not args.report:
        print(f"--steps {args.steps} for each run" + (" (the default: about 7 minutes of training on latents on one "
              "core, ten times as long on pixels)" if args.steps == DEFAULT_STEPS else ""), flush=True)  # fmt: skip
        budget = TrainingBudget(args.max_minutes, "compare_generation")
        for model, seed, folder in pending_runs(output, args.models, args.seeds, "compare_generation", budget):
            source, stage1 = None, "none"
            if model != "pixels":
                path = stage1_folder(model, seed, args)
                vae = stage1_model(path, *STAGE1[model])
                if vae.config.sample_size != args.resolution:
                    raise ValueError(f"{STAGE1[model][1]} {str(path)!r} works on {vae.config.sample_size}x"
                                     f"{vae.config.sample_size} images, not --resolution {args.resolution}")
                source, stage1 = os.path.relpath(path.resolve(), ROOT), str(path)
                del vae
            if training_finished(folder, args.steps):
                print(f"[compare_generation] {model} seed {seed}: trained, evaluating", flush=True)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                if not train(model, stage1, folder, seed, args, extra, budget):
                    break
            evaluation = evaluation or Evaluation(args)
            row = evaluation.run(model, seed, folder, source, output)
            save_result(folder, {"setup": setup_of(args), "benchmark_command": command, "row": row})
        if budget.stopped:
            return {}
    runs = collect(output, MODELS)
    if not runs:
        raise FileNotFoundError(f"--output {str(output)!r}: no ended runs in runs/ (no runs/<model>-seed<k>/"
                                "result.json): run some first, e.g. --models brics --seeds 0")
    setup = check_same({**runs, **collect(output, [BASELINE])}, SETUP_KEYS)
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    baselines = {seed: load_result(run_folder(output, BASELINE, seed)) for seed in seeds}
    missing = [seed for seed, result in baselines.items() if result is None]
    if missing:
        evaluation = evaluation or Evaluation(runs_args(args, setup))
        baselines.update({seed: {"row": evaluation.baseline(seed, output)} for seed in missing})
    any_result = next(iter(next(iter(runs.values())).values()))
    setup = {**any_result["setup"], **setup}
    floorless = [(model, seed, result) for model, by_seed in runs.items() for seed, result in by_seed.items()
                 if result["row"].get("stage1") and "decoded_training" not in result["row"]]
    for model, seed, result in floorless:  # runs evaluated before the floor was measured
        if not (ROOT / result["row"]["stage1"]).is_dir():
            print(f"[compare_generation] {model} seed {seed}: its autoencoder {result['row']['stage1']} is gone, so "
                  "its decoded-training floor is not measured", flush=True)
            continue
        evaluation = evaluation or Evaluation(runs_args(args, setup))
        result["row"]["decoded_training"] = evaluation.decoded_training(model, seed, result["row"]["stage1"])
        save_result(run_folder(output, model, seed), result)
    results = write_report(output, command, setup, runs, {seed: r["row"] for seed, r in baselines.items()})
    print((output / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
