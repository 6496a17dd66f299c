"""The torch grid look-up of this checkout against the one of an earlier commit, side by side in one process.

The earlier ``src/diffusers_brics/models/feature_grid.py`` is read with ``git show <commit>:...`` and imported as a
module of its own; its grids get the same tables as this checkout's. Both then look up the same queries (those the
retrieval builds from random key codes: the real access pattern, pixel coordinates included), alternating, for:

* a ``paper-64x64x4`` decode (batch 1, forward only, inference mode);
* a ``small-32`` training step's look-ups (batch 32, forward + backward into the queries and the tables);
* a ``paper-64x64x4`` training step's look-ups (batch 1, forward + backward).

Each figure is the median milliseconds of the ``N_h`` look-ups of one call.

    python benchmarks/compare_grid_lookup.py --against 32269c7

Writes ``results.json`` and ``report.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from diffusers_brics import BRICSAutoencoder

from benchmark_runs import ROOT, RESULTS  # beside this script
from decode_benchmark import time_interleaved  # beside this script

GRID_MODULE = "src/diffusers_brics/models/feature_grid.py"
CASES = {  # name: (preset, batch, with backward)
    "paper-64x64x4 decode, batch 1": ("paper-64x64x4", 1, False),
    "small-32 training step, batch 32": ("small-32", 32, True),
    "paper-64x64x4 training step, batch 1": ("paper-64x64x4", 1, True),
}


def load_grid_module(commit: str):
    """The ``feature_grid`` module of ``commit``, imported under another name."""
    source = subprocess.run(["git", "show", f"{commit}:{GRID_MODULE}"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "feature_grid_earlier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("feature_grid_earlier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_case(earlier, preset: str, batch: int, backward: bool, rounds: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = BRICSAutoencoder.from_preset(preset, grid_backend="torch")
    retrieval = model.retrieval
    queries = retrieval.queries(torch.rand(batch, *model.latent_shape), relaxed_precision=False).detach()
    queries.requires_grad_(backward)
    old = []
    for grid in retrieval.grids:
        twin = earlier.MultiResolutionFeatureGrid(
            input_dim=grid.input_dim, num_levels=grid.num_levels, features_per_level=grid.features_per_level,
            log2_hashmap_size=grid.log2_hashmap_size, min_resolution=grid.min_resolution,
            max_resolution=grid.max_resolution, backend="torch", convention=grid.convention, indexing=grid.indexing)
        twin.load_state_dict(grid.state_dict())
        old.append(twin)

    def call(grids) -> None:
        outs = [grid.interpolate(q) for grid, q in zip(grids, queries)]
        if backward:
            sum(out.square().sum() for out in outs).backward()

    current = list(retrieval.grids)
    times = time_interleaved({"earlier": lambda: call(old), "this checkout": lambda: call(current)}, warmup, rounds,
                             inference=not backward, desc=preset)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="32269c7", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--output", default=str(RESULTS / "grid_lookup"))
    args = parser.parse_args(argv)
    earlier = load_grid_module(args.against)
    medians = {case: time_case(earlier, *CASES[case], args.rounds, args.warmup) for case in args.cases}
    results = dict(against=args.against, torch=torch.__version__, threads=torch.get_num_threads(),
                   rounds=args.rounds, median_ms=medians)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# The grid look-up against an earlier commit, side by side", "",
             f"`python benchmarks/compare_grid_lookup.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} alternating "
             "rounds; the look-ups of all groups of one call, on the queries of random key codes.", "",
             f"| case | {args.against} (ms) | this checkout (ms) | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {case} | {m['earlier']:.1f} | {m['this checkout']:.1f} | {m['earlier'] / m['this checkout']:.2f}x |"
              for case, m in medians.items()]
    (output / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
