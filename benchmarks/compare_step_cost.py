"""Cost of a stage-1 training step: the release's architecture against this package's first layout, side by side.

Times, in one process and interleaved, a whole ``small-32`` training step (forward, L2 loss, backward, Adam; batch
32 at 32x32) and the forward + backward of its three parts: the encoder, the retrieval (grids, ``F_mlp`` and style
networks) and the decoder, the latter also without its noise inputs and output clamps (the release's decoder
otherwise unchanged). Medians of ``--repeats`` rounds after ``--warmup``.

    python benchmarks/compare_step_cost.py

Writes ``results.json`` and ``report.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers_brics import BRICSAutoencoder

from benchmark_runs import ROOT, RESULTS  # beside this script

FIRST_LAYOUT = ROOT / "benchmarks" / "configs" / "small-32-v0.1"


def timers(model: BRICSAutoencoder, images: torch.Tensor) -> dict:
    """Zero-argument callables: a whole training step and the forward + backward of each part."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.99), eps=1e-15)
    z = model.encode(images).latents.detach().requires_grad_(True)
    f, style = (t.detach().requires_grad_(True) if t is not None else None for t in model.retrieval(z))

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(images).sample, images).backward()
        optimizer.step()

    return {
        "step": step,
        "encoder": lambda: model.encode(images).latents.sum().backward(),
        "retrieval": lambda: sum(t.square().mean() for t in model.retrieval(z) if t is not None).backward(),
        "decoder": lambda: model.decoder(f, style, "random").square().mean().backward(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "compare_step_cost"))
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(32, 3, 32, 32) * 2 - 1
    models = {
        "release": BRICSAutoencoder.from_preset("small-32"),
        "release, no decoder noise or clamp": BRICSAutoencoder.from_preset(
            "small-32", decoder_noise=False, decoder_conv_clamp=None),
        "first layout": BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(FIRST_LAYOUT)),
    }
    calls = {name: timers(model, images) for name, model in models.items()}
    times = {(name, part): [] for name, parts in calls.items() for part in parts}
    for round_ in range(args.warmup + args.repeats):
        for name, parts in calls.items():
            for part, fn in parts.items():
                start = time.perf_counter()
                fn()
                if round_ >= args.warmup:
                    times[name, part].append(time.perf_counter() - start)
    medians = {name: {part: statistics.median(times[name, part]) for part in parts} for name, parts in calls.items()}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                                     "median_seconds": medians}, indent=2))
    report = ["# A `small-32` training step (batch 32): release against first layout", "",
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats} interleaved "
              "rounds; parts: forward + backward.", "",
              "| model | step (s) | encoder (s) | retrieval (s) | decoder (s) |", "|---|---|---|---|---|"]
    report += [f"| {name} | " + " | ".join(f"{m[p]:.3f}" for p in ("step", "encoder", "retrieval", "decoder")) + " |"
               for name, m in medians.items()]
    (output / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
