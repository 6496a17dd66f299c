"""Stage-1 training throughput of BRICS against diffusers' AutoencoderKL, trained by the same script.

Both are trained by ``python -m diffusers_brics train-ae`` (what ``examples/train_brics_ae.py`` runs) with the same
flags, data (the embedded emoji), batch and seed, at equal code size (the ``small-32`` presets: an 8x8 code of 4
channels), with the same losses: by default L2 only, plus each model's own term (KL 1e-6 for AutoencoderKL), as
``compare_autoencoders.py`` (the perceptual and GAN terms cost the same for both and, at 32x32 on a CPU, many times
more than the autoencoders themselves: the VGG16 loss works at 224x224); arguments after ``--`` replace
``--perceptual_weight 0 --gan_weight 0``. ``--steps`` steps each, without validation or checkpoints in between. Each model is trained
``--rounds`` times, the runs alternating between models (and, with ``--compile``, between eager and
``--torch_compile``) so that drift of the machine affects them alike; the figure is the median of the
``train_images_per_second`` each run writes to its ``metrics.json`` (the steps of the run over its training time,
compilation included).

    python benchmarks/compare_training_throughput.py --steps 60 --rounds 2 --compile
    python benchmarks/compare_training_throughput.py --steps 20 -- --perceptual_weight 1 --gan_weight 0.1   # full loss
    python benchmarks/compare_training_throughput.py --tiny    # tiny presets, 2 steps: a smoke run

Writes ``results.json`` and ``report.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from benchmark_runs import RESULTS, fresh_run_dir, run_shown, split_argv  # beside this script

MODELS = {"brics": "BRICS", "autoencoderkl": "AutoencoderKL"}
DEFAULT_LOSS = ["--perceptual_weight", "0", "--gan_weight", "0"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each model")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="also train each with --torch_compile")
    parser.add_argument("--tiny", action="store_true", help="tiny presets, 2 steps, 1 round (a smoke run)")
    parser.add_argument("--output", default=str(RESULTS / "training_throughput"))
    own, loss_flags = split_argv(DEFAULT_LOSS) if argv is None else (argv, DEFAULT_LOSS)
    args = parser.parse_args(own)
    if args.tiny:
        args.steps, args.rounds, args.batch_size = 2, 1, 4
    output = Path(args.output)
    run_dir = fresh_run_dir(output)
    variants = [("eager", [])] + ([("compiled", ["--torch_compile"])] if args.compile else [])
    throughput: dict[str, list[float]] = {}
    commands = {}
    for round_ in range(args.rounds):
        for model_type in MODELS:
            for variant, extra in variants:
                name = f"{model_type}, {variant}"
                folder = run_dir / f"{model_type}-{variant}-{round_}"
                command = [sys.executable, "-m", "diffusers_brics", "train-ae", "--model_type", model_type,
                           "--preset", "tiny" if args.tiny else "small-32", "--train_batch_size",
                           str(args.batch_size), "--max_train_steps", str(args.steps), "--seed", "0",
                           "--validation_steps", str(10**6), "--checkpointing_steps", str(10**6),
                           "--report_to", "none", "--output_dir", str(folder), *loss_flags, *extra]
                commands[name] = run_shown(command)
                metrics = json.loads((folder / "metrics.json").read_text())
                throughput.setdefault(name, []).append(metrics["train_images_per_second"])
    medians = {name: statistics.median(values) for name, values in throughput.items()}
    best = {m: max(v for n, v in medians.items() if n.startswith(m + ",")) for m in MODELS}
    results = dict(steps=args.steps, rounds=args.rounds, batch_size=args.batch_size, torch=torch.__version__,
                   threads=torch.get_num_threads(), images_per_second=throughput, median_images_per_second=medians,
                   best_images_per_second=best, ratio_at_best=best["brics"] / best["autoencoderkl"],
                   commands=commands)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# Stage-1 training throughput: BRICS against AutoencoderKL, the same script", "",
             f"`python benchmarks/compare_training_throughput.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
             "", f"{args.rounds} run(s) of {args.steps} steps each at batch {args.batch_size}, alternating; torch "
             f"{torch.__version__}. Throughput: steps x batch / training seconds of a run (compilation included).",
             "", "| model | images/s (median) | runs |", "|---|---:|---|"]
    lines += [f"| {name} | {medians[name]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |"
              for name, values in throughput.items()]
    lines += ["", f"BRICS / AutoencoderKL, each at its best: **{results['ratio_at_best']:.2f}x**.", "",
              "Command of the last run of each:", ""]
    lines += [f"- {name}: `{command}`" for name, command in commands.items()]
    (output / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
