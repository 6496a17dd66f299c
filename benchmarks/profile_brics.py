"""Where the time of BRICS goes: a decode and a stage-1 training step, split into parts and into operators.

Two workloads, each on an untrained model with fixed random inputs (seed 0):

* ``decode``: preset ``paper-64x64x4``, key codes ``(1, 4, 64, 64)`` -> a 256x256 image, eval mode, inference mode;
* ``train-step``: preset ``small-32``, batch 32 at 32x32, training mode: forward, L2 loss, backward, Adam (Adam at
  the ``small`` stage-1 recipe's betas).

``--model`` profiles another preset or a folder with a ``config.json`` (for example
``benchmarks/configs/small-32-release-layout``, the release's layout at the small widths).

For each it reports

1. the median seconds of the whole workload and of its parts, timed interleaved in one loop: the *grid look-up*
   (the ``N_h`` `MultiResolutionFeatureGrid` look-ups alone), the whole *feature retrieval* (look-ups, ``F_mlp``
   and the group style networks: `KeyCodeRetrieval`), the *synthesis* (`BRICSDecoder`) and, for the training step,
   the *encoder*; in the training step every part is its forward + backward, and the parts the training loop adds
   around it are timed too: the *EMA* update of the weights (`HalfLifeEMA`) and *data loading* (a batch of the
   embedded emoji read, decoded, cropped and collated by the training script's `DataLoader`);
2. the operators that take the most time, from ``torch.profiler`` over ``--profile_runs`` runs of the whole
   workload (self time: the time of the operator itself, not of what it calls).

``--compile`` also times the workload and every part with their networks under ``torch.compile(fullgraph=True)``
(interleaved with the eager calls), and reports each one's compile time (its first call).

    python benchmarks/profile_brics.py --workload decode --output benchmarks/results/profile/decode
    python benchmarks/profile_brics.py --workload train-step --output benchmarks/results/profile/train_step
    python benchmarks/profile_brics.py --workload decode --tiny --repeats 1 --warmup 0   # the tiny preset, seconds

Writes ``results.json`` and ``report.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from diffusers_brics import BRICSAutoencoder

from benchmark_runs import RESULTS  # beside this script
from decode_benchmark import time_interleaved  # beside this script

COMPILED = ", compiled"
WORKLOADS = {
    # workload: (preset, batch size, tiny preset's batch size)
    "decode": ("paper-64x64x4", 1, 1),
    "train-step": ("small-32", 32, 4),
}


def load_model(name: str) -> BRICSAutoencoder:
    """An untrained model of a preset, or of the ``config.json`` in a folder."""
    if Path(name, "config.json").is_file():
        return BRICSAutoencoder.from_config(BRICSAutoencoder.load_config(name))
    return BRICSAutoencoder.from_preset(name)


def training_extras(model: BRICSAutoencoder, batch: int) -> dict[str, Callable[[], Any]]:
    """The parts of a training step outside the model: the EMA update and loading one batch of the emoji."""
    from diffusers_brics.training.data import ImageDataset, collate_images, image_transform, load_image_datasets
    from diffusers_brics.training.ema import HalfLifeEMA

    ema = HalfLifeEMA(model.parameters(), halflife_images=10_000, batch_size=batch, rampup=0.05)
    train_set, _ = load_image_datasets(None, None, None, model.config.sample_size, None, 0.05, 0)
    images = ImageDataset(train_set, "image", image_transform(model.config.sample_size, False))
    loader = torch.utils.data.DataLoader(images, batch_size=batch, shuffle=True, drop_last=True,
                                         collate_fn=collate_images)
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    return {"EMA": lambda: ema.step(model.parameters()), "data loading": next_batch}


def build(workload: str, tiny: bool, device: str, compile_: bool = False, model_name: str | None = None,
          batch_size: int | None = None) -> tuple[BRICSAutoencoder, dict[str, Callable[[], Any]]]:
    """The model and zero-argument calls of the whole workload (``"total"``) and of its parts; with ``compile_``
    every network they run is under ``torch.compile(fullgraph=True)`` (backward and optimiser steps stay eager)."""
    preset, batch, tiny_batch = WORKLOADS[workload]
    torch.manual_seed(0)
    model = load_model("tiny" if tiny else model_name or preset).to(device)
    batch = tiny_batch if tiny else batch_size or batch
    size = model.config.sample_size
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    retrieval = model.retrieval

    def lookups(queries: torch.Tensor) -> list[torch.Tensor]:
        return [grid.interpolate(q) for grid, q in zip(retrieval.grids, queries)]

    wrap = (lambda fn: torch.compile(fn, fullgraph=True)) if compile_ else (lambda fn: fn)
    run_model, encode, decode = wrap(model), wrap(model.encode), wrap(model.decode)
    run_lookups, run_retrieval, run_decoder = wrap(lookups), wrap(retrieval), wrap(model.decoder)
    if workload == "decode":
        model.eval()
        z = torch.rand(batch, *model.latent_shape, device=device)
        queries = retrieval.queries(z)
        with torch.inference_mode():
            features, style = retrieval(z)
        return model, {
            "total": lambda: decode(z).sample,
            "grid look-up": lambda: run_lookups(queries),
            "feature retrieval": lambda: run_retrieval(z),
            "synthesis": lambda: run_decoder(features, style),
        }

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.99), eps=1e-15)
    z = model.encode(images).latents.detach().requires_grad_(True)
    queries = retrieval.queries(z).detach().requires_grad_(True)
    # the style is None where the decoder makes its own from the feature block (decoder_style="feature_block")
    f, style = (t if t is None else t.detach().requires_grad_(True) for t in retrieval(z))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(run_model(images).sample, images).backward()
        optimizer.step()

    return model, {
        "total": step,
        "encoder": lambda: encode(images).latents.sum().backward(),
        "grid look-up": lambda: sum(h.square().mean() for h in run_lookups(queries)).backward(),
        "feature retrieval": lambda: sum(t.square().mean() for t in run_retrieval(z) if t is not None).backward(),
        "synthesis": lambda: run_decoder(f, style, "random").square().mean().backward(),
        **({} if compile_ else training_extras(model, batch)),
    }


def top_operators(fn: Callable[[], Any], runs: int, device: str, inference: bool, limit: int = 15) -> list[dict]:
    """The operators with the most self time over ``runs`` calls of ``fn`` (ms per call and share)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.inference_mode(inference), profile(activities=activities) as prof:
        for _ in range(runs):
            fn()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [dict(operator=e.key, calls_per_run=e.count / runs, ms_per_run=getattr(e, key) / runs / 1e3,
                 share=getattr(e, key) / total) for e in events[:limit]]


def run(workload: str, tiny: bool, device: str, warmup: int, repeats: int, profile_runs: int,
        compile_: bool, model_name: str | None = None, batch_size: int | None = None) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    inference = workload == "decode"
    model, calls = build(workload, tiny, device, model_name=model_name, batch_size=batch_size)
    compile_s = {}
    if compile_:
        _, compiled = build(workload, tiny, device, compile_=True, model_name=model_name, batch_size=batch_size)
        for name, fn in compiled.items():  # the first call compiles
            sync()
            start = time.perf_counter()
            with torch.inference_mode(inference):
                fn()
            sync()
            compile_s[name] = time.perf_counter() - start
        calls.update({name + COMPILED: fn for name, fn in compiled.items()})
    times = time_interleaved(calls, warmup, repeats, sync, inference, desc=workload)
    medians = {name: statistics.median(t) for name, t in times.items()}
    variants = [""] + ([COMPILED] if compile_ else [])
    return dict(
        setup=dict(workload=workload, preset="tiny" if tiny else model_name or WORKLOADS[workload][0],
                   parameters=sum(p.numel() for p in model.parameters()),
                   batch_size=WORKLOADS[workload][2] if tiny else batch_size or WORKLOADS[workload][1],
                   device=device, threads=torch.get_num_threads(),
                   warmup=warmup, repeats=repeats, profile_runs=profile_runs, torch=torch.__version__,
                   python=platform.python_version(), machine=platform.processor() or platform.machine()),
        median_s=medians,
        share_of_total={name + v: medians[name + v] / medians["total" + v]
                        for v in variants for name in calls
                        if name != "total" and not name.endswith(COMPILED) and name + v in medians},
        compile_s=compile_s,
        operators=top_operators(calls["total"], profile_runs, device, inference),
    )


def format_report(results: dict[str, Any], command: str) -> str:
    s, medians = results["setup"], results["median_s"]
    what = "decode" if s["workload"] == "decode" else "training step (forward + backward + Adam)"
    compiled = bool(results["compile_s"])
    lines = [
        f"# Profile: `{s['preset']}` {what}, batch {s['batch_size']}"
        + (f", {s['parameters'] / 1e6:.2f}M parameters" if "parameters" in s else ""), "",
        f"`{command}`", "",
        f"{s['device']} ({s['threads']} threads), torch {s['torch']}; medians of {s['repeats']} interleaved rounds "
        f"after {s['warmup']} warm-up rounds" + ("; parts: forward + backward" if s["workload"] != "decode" else ""),
        "",
    ]
    header = "| part | eager (ms) | share |" + (" compiled (ms) | share | compile (s) |" if compiled else "")
    lines += [header, "|---|" + "---:|" * (header.count("|") - 2)]
    for name in (n for n in medians if not n.endswith(COMPILED)):
        label = f"**whole {s['workload']}**" if name == "total" else name
        cells = [f"{medians[name] * 1e3:.1f}", "100%" if name == "total" else f"{results['share_of_total'][name]:.1%}"]
        if compiled and name + COMPILED not in medians:
            cells += ["", "", ""]
        elif compiled:
            c = name + COMPILED
            cells += [f"{medians[c] * 1e3:.1f}",
                      "100%" if name == "total" else f"{results['share_of_total'][c]:.1%}",
                      f"{results['compile_s'][name]:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The grid look-up is part of the feature retrieval; the parts are timed on their own, so they need not "
              "add up to the whole" + ("; EMA and data loading come on top of it in a training run." if "EMA" in medians
                                       else ".") + (" Compiled: every network under `torch.compile(fullgraph=True)`; backward "
                                        "and optimiser steps eager." if compiled else ""), ""]
    lines += [f"Operators by self time, eager ({s['profile_runs']} runs of the whole workload under `torch.profiler`):",
              "", "| operator | calls / run | ms / run | share |", "|---|---:|---:|---:|"]
    lines += [f"| `{o['operator']}` | {o['calls_per_run']:g} | {o['ms_per_run']:.2f} | {o['share']:.1%} |"
              for o in results["operators"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="decode")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset (a test of the script)")
    parser.add_argument("--model", default=None,
                        help="a preset or a folder with a config.json (default: the workload's preset)")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the workload's (1 / 32)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile_runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the workload under torch.compile")
    parser.add_argument("--output", default=None, help="folder for results.json and report.md "
                        "(default benchmarks/results/profile/<workload>)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.profile_runs < 1:
        parser.error("--repeats and --profile_runs must be >= 1, --warmup >= 0")
    results = run(args.workload, args.tiny, args.device, args.warmup, args.repeats, args.profile_runs, args.compile,
                  args.model, args.batch_size)
    output = Path(args.output or RESULTS / "profile" / args.workload.replace("-", "_"))
    output.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/profile_brics.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    report = format_report(results, command.strip())
    (output / "results.json").write_text(json.dumps(results, indent=2))
    (output / "report.md").write_text(report)
    print(report)
    return results


if __name__ == "__main__":
    main()
