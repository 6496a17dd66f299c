"""Equal-budget reconstruction: BRICS against diffusers' AutoencoderKL and VQModel, and CVQ-VAE (a VQModel with an
online clustered codebook), on the embedded 32x32 emoji, one model and seed per run.

The four autoencoders are trained by the same script (``examples/train_brics_ae.py --model_type ...``) with the
same steps, batch, data and losses (L2 only by default, as ``train_ae_benchmark.py``: the perceptual and GAN terms
cost more than the autoencoders themselves at 32x32 on a CPU; arguments after ``--`` replace them), plus each
model's own term (KL 1e-6 summed, LDM's; VQ codebook + 0.25 commitment, CVQ-VAE's codebook revived from the
encoder's features); the BRICS grids have their own learning rate, 1e-2, as in the small-image recipe (the peers
have no grids; everything else shares 2e-3; a ``--grid_learning_rate`` after ``--`` replaces it). Code sizes are
equal: an 8x8 code of 4 channels (``small-32`` presets; the VQ codes are 8x8 indices into 1,024 entries of 4
dimensions). Then, on the held-out split: PSNR / SSIM / LPIPS-alex, FID and KID of the reconstructions against the
originals (the standard FID Inception), decode GMACs and parameters, and the usage of the BRICS grids (reachable
entries read per level, entries moved by training) beside the codebook usage and perplexity of both VQ models.

Each model and seed is one run in ``OUTPUT/runs/<model>-seed<k>`` (the trained model in its ``autoencoder/`` for
``compare_generation.py``; git-ignored but for the run's records, see ``seeded_runs.py``): its ``result.json`` is
written when the run ends, and a run that has one is not run again; an interrupted training resumes from its last
checkpoint. After the runs (or alone, with ``--report``), the report is assembled from every run there: the mean and
spread over seeds of each figure, and the training step and decode times of the models measured side by side in this
process (kept from the report already there when it timed the same models on as many threads, so that reassembling it
under another load, or in a clone without the models, does not move them; ``--remeasure`` times them again). Writes
``results.json``, ``report.md``, ``metrics.png``, ``usage.png`` and ``reconstructions.png`` into ``--output``.

    python benchmarks/compare_autoencoders.py --models cvqvae --seeds 0        # one run: 10-14 minutes on one core
    python benchmarks/compare_autoencoders.py --seeds 0,1,2                    # every model, three seeds
    python benchmarks/compare_autoencoders.py --report                         # the report of the runs there
    python benchmarks/compare_autoencoders.py --tiny --no_fid --output /tmp/cmp   # the test's smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from PIL import Image, ImageDraw

from diffusers_brics.evaluate import evaluate_reconstruction, image_batches, load_split
from diffusers_brics.models import adapters

from benchmark_runs import ROOT, RESULTS, split_argv  # beside this script
from compare_autoencoders_report import GRID_LEARNING_RATE, MODEL_TYPES, NAMES, write_report
from decode_benchmark import count_gmacs, count_params
from seeded_runs import add_run_arguments, chosen_models, collect, pending_runs, resume_flags, save_result
from seeded_runs import TrainingBudget, check_same, reported_lowest_seeds, require_run_files, run_folder
from seeded_runs import training_environment, training_finished

DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0"]
HELD_OUT_GRID = "held_out_reconstructions.png"  # a run's held-out originals over their reconstructions
SETUP_KEYS = ("preset", "steps", "batch_size", "train_args", "max_images", "fid")


def decode_modules(vae) -> list[torch.nn.Module]:
    """The modules a decode runs."""
    if adapters.model_type_of(vae) == "brics":
        return [vae.retrieval, vae.decoder]
    parts = [vae.post_quant_conv, vae.decoder]
    return parts + ([vae.quantize] if hasattr(vae, "quantize") else [])


def median_step_seconds(models: dict, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of an L2 training step (forward, backward, Adam) of each model at the batch of ``images``,
    the models taking turns so that drift of the machine affects them equally."""
    steps = {}
    for name, vae in models.items():
        model = adapters.build_autoencoder(name, config=dict(vae.config)).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(images).sample, images).backward()
            optimizer.step()

        steps[name] = step
    times = {name: [] for name in steps}
    for round_ in range(repeats + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def median_decode_seconds(models: dict, batch: int, repeats: int) -> dict[str, float]:
    latents = {name: torch.randn(batch, *adapters.latent_shape(vae)).clamp(-3, 3) for name, vae in models.items()}
    latents["brics"] = latents["brics"].sigmoid() if "brics" in latents else None
    times = {name: [] for name in models}
    for round_ in range(repeats + 1):
        for name, vae in models.items():
            start = time.perf_counter()
            adapters.decode_latents(vae, latents[name])
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def code_description(vae) -> str:
    channels, height, width = adapters.latent_shape(vae)
    if isinstance(vae, VQModel):
        return f"{height}x{width} indices into {vae.config.num_vq_embeddings} x {channels}-d entries"
    return f"{height}x{width}x{channels} floats" + (" in [0, 1]" if adapters.model_type_of(vae) == "brics" else "")


def train_command(kind: str, seed: int, folder: Path, preset: str, steps: int, args, extra: list[str]) -> list[str]:
    """The stage-1 training of one run, resuming from the newest checkpoint in ``folder`` if there is one."""
    return [
        sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--model_type", kind, "--preset", preset,
        "--output_dir", str(folder), "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps),
        "--validation_steps", str(steps), *resume_flags(steps), "--report_to", "none", "--seed", str(seed),
        *(["--max_eval_images", "16"] if args.tiny else []),
        *(["--grid_learning_rate", GRID_LEARNING_RATE] if kind == "brics" else []),  # before the extras: they win
        *extra,
    ]  # fmt: skip


def run_one(kind: str, seed: int, folder: Path, setup: dict, args, extra: list[str], command: str,
            budget: TrainingBudget) -> None:
    """Train (or resume) one model with one seed within ``budget``, evaluate it on the held-out split, write its
    ``result.json``; a training the budget stopped is left to be continued."""
    shown = None
    if training_finished(folder, setup["steps"]):
        print(f"[compare_autoencoders] {kind} seed {seed}: trained, evaluating", flush=True)
    else:
        training = train_command(kind, seed, folder, setup["preset"], setup["steps"], args, extra)
        shown = budget.train(training, folder, setup["steps"], f"{kind} seed {seed}")
        if shown is None:
            return
    if shown is None and (folder / "benchmark_command.txt").is_file():
        shown = (folder / "benchmark_command.txt").read_text().strip()
    vae = adapters.load_autoencoder(str(folder)).eval()
    size = vae.config.sample_size
    held_out, column = load_split("held-out", size)
    batches = image_batches(held_out, column, size, 64, setup["max_images"], f"evaluating {NAMES[kind]} seed {seed}")
    metrics, grid = evaluate_reconstruction(vae, batches, with_fid=setup["fid"], num_grid_images=12)
    grid.save(folder / HELD_OUT_GRID)  # beside the training's own
    trained = json.loads((folder / "metrics.json").read_text())
    z = adapters.encode_latents(vae, torch.zeros(1, 3, size, size))
    row = {
        "seed": seed, "command": shown, "code": code_description(vae),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "decode_parameters": count_params(decode_modules(vae)),
        "decode_gmacs": count_gmacs(lambda: adapters.decode_latents(vae, z)),
        "script_train_images_per_second": trained.get("train_images_per_second"), "steps": trained["step"],
        **training_environment(trained),
        **{k: v for k, v in metrics.items() if not k.startswith(("grid_usage_level", "grid_trained_level"))},
    }  # fmt: skip
    if kind == "brics":
        levels = vae.config.grid_num_levels
        row["grid_usage_per_level"] = [metrics[f"grid_usage_level_{i}"] for i in range(levels)]
        row["grid_trained_per_level"] = [metrics[f"grid_trained_level_{i}"] for i in range(levels)]
        row["dense_levels"] = vae.retrieval.grids[0].num_dense_levels
    save_result(folder, {"setup": setup, "benchmark_command": command, "row": row})
    print(f"[compare_autoencoders] {kind} seed {seed}: PSNR {row['psnr']:.2f}, saved {folder / 'result.json'}",
          flush=True)


def combined_grid(grids: list[Image.Image], labels: list[str], scale: int = 2) -> Image.Image:
    """The originals once, then one row of reconstructions per grid (each grid: originals over reconstructions),
    each row named in a margin on the left, the images enlarged ``scale`` times (nearest pixel: no smoothing)."""
    tile = grids[0].height // 2
    rows = [grids[0].crop((0, 0, grids[0].width, tile))] + [g.crop((0, tile, g.width, 2 * tile)) for g in grids]
    margin, height = 110, tile * scale
    combined = Image.new("RGB", (margin + grids[0].width * scale, height * len(rows)), "white")
    draw = ImageDraw.Draw(combined)
    for i, (row, label) in enumerate(zip(rows, ["originals", *labels])):
        combined.paste(row.resize((row.width * scale, height), Image.NEAREST), (margin, i * height))
        draw.text((6, i * height + height // 2 - 6), label, fill="black")
    return combined


TIMING_KEYS = ("train_step_seconds", "train_images_per_second", "decode_seconds_per_image")


def kept_timings(output: Path, setup: dict) -> dict | None:
    """The timings of the report already in ``output`` if it timed its models with the same ``setup``, this PyTorch
    and as many threads, else None (whether its models are the ones to time is the caller's check)."""
    path = output / "results.json"
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    models = previous.get("models", {})
    same = (previous.get("setup") == setup and previous.get("torch") == torch.__version__
            and previous.get("threads") == torch.get_num_threads())  # fmt: skip
    if not same or not all(key in entry for entry in models.values() for key in TIMING_KEYS):
        return None
    return {kind: {key: entry[key] for key in TIMING_KEYS} for kind, entry in models.items()}


def assemble(output: Path, command: str, remeasure: bool = False) -> dict:
    """The report of every ended run in ``OUTPUT/runs``, with the training step and decode times of the lowest
    seed's model of each kind measured side by side here and their held-out reconstructions; where the report there
    shows the same lowest seeds, its timings are kept (`kept_timings`, unless ``remeasure``), and so is its picture
    when the runs' own pictures are not here (a clone has only the runs' records)."""
    runs = collect(output, MODEL_TYPES)
    if not runs:
        raise FileNotFoundError(f"--output {str(output)!r}: no ended runs in runs/ (no runs/<model>-seed<k>/"
                                "result.json): run some first, e.g. --models brics --seeds 0")
    setup = check_same(runs, SETUP_KEYS)
    folders = {kind: run_folder(output, kind, min(by_seed)) for kind, by_seed in runs.items()}
    shown_before = reported_lowest_seeds(output) == {kind: min(by_seed) for kind, by_seed in runs.items()}
    timings = kept_timings(output, setup) if shown_before and not remeasure else None
    if timings is None:
        require_run_files(folders, "autoencoder", "the report there keeps its timings when it timed the same runs "
                          "with this PyTorch on as many threads, without --remeasure")  # fmt: skip
        models = {kind: adapters.load_autoencoder(str(folder)).eval() for kind, folder in folders.items()}
        size = next(iter(models.values())).config.sample_size
        train, column = load_split("train", size)
        images = next(image_batches(train, column, size, setup["batch_size"], desc="a training batch"))
        repeats = 1 if setup["preset"] == "tiny" else 5
        step_seconds = median_step_seconds(models, images, repeats)
        decode_seconds = median_decode_seconds(models, 64, repeats)
        timings = {kind: {"train_step_seconds": step_seconds[kind],
                          "train_images_per_second": len(images) / step_seconds[kind],
                          "decode_seconds_per_image": decode_seconds[kind] / 64} for kind in models}  # fmt: skip
    else:
        print(f"[compare_autoencoders] timings kept from {output / 'results.json'} (--remeasure times them again)")
    picture = output / "reconstructions.png"
    if shown_before and picture.is_file() and not all((f / HELD_OUT_GRID).is_file() for f in folders.values()):
        print(f"[compare_autoencoders] {picture} kept: it shows the same runs, whose own pictures are not here")
    else:
        require_run_files(folders, HELD_OUT_GRID, "the report there keeps its picture while it shows the same lowest "
                          "seed of each model")
        grids = [Image.open(folder / HELD_OUT_GRID) for folder in folders.values()]
        combined_grid(grids, [NAMES[kind] for kind in folders]).save(picture)
    return write_report(output, command, setup, runs, timings, torch.__version__, torch.get_num_threads())


def main() -> dict:
    argv, extra = split_argv(DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each run (default 1000: the "
                        "time-to-quality benchmark's budget; the learning rate is annealed to 0 over the run)")
    parser.add_argument("--batch_size", type=int, default=16, help="the small-image recipe's batch (default 16)")
    add_run_arguments(parser, MODEL_TYPES, MODEL_TYPES)
    parser.add_argument("--tiny", action="store_true", help="tiny presets, 2 steps, 16 held-out images (a smoke run)")
    parser.add_argument("--no_fid", action="store_true", help="skip FID / KID")
    parser.add_argument("--remeasure", action="store_true", help="time the models again even when the report in "
                        "--output has timed the same ones (by default its timings are kept)")
    parser.add_argument("--output", default=str(RESULTS / "compare_autoencoders"))
    args = parser.parse_args(argv)
    try:
        models = chosen_models(args.models, MODEL_TYPES)
    except ValueError as error:
        parser.error(str(error))
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch_size must be >= 1")
    preset, steps = ("tiny", 2) if args.tiny else ("small-32", args.steps)
    setup = {"preset": preset, "steps": steps, "batch_size": args.batch_size, "train_args": " ".join(extra),
             "max_images": 16 if args.tiny else None, "fid": not args.no_fid}
    output = Path(args.output)
    command = shlex.join(["python", "benchmarks/compare_autoencoders.py", *sys.argv[1:]])
    if not args.report:
        budget = TrainingBudget(args.max_minutes, "compare_autoencoders")
        for kind, seed, folder in pending_runs(output, models, args.seeds, "compare_autoencoders", budget):
            run_one(kind, seed, folder, setup, args, extra, command, budget)
        if budget.stopped:
            return {}
    results = assemble(output, command, args.remeasure)
    print((output / "report.md").read_text())
    return results


if __name__ == "__main__":
    main()
