"""Feature-grid look-up time of the torch and Triton backends at the paper's configuration.

One `MultiResolutionFeatureGrid` as in the paper's 64x64x4 model (3-D queries, 16 levels of 4 features,
``T = 2**18``, ``r = 16..64``, convention ``"torch-ngp"``, tiled indexing) is looked up by both backends, on the
same table: the forward pass alone (no gradients) and a training step's forward + backward (gradients into the
queries and the table, against a fixed random upstream gradient), for 16,384 and 1,048,576 queries. Timings are
medians of interleaved runs after warm-up runs (the first one compiles the Triton kernels), the device
synchronised around each run. Before timing, the two backends' outputs and both gradients are compared (largest
absolute difference, next to the largest absolute value of the torch result; the table is drawn from N(0, 1)).

Run from the repository root::

    python benchmarks/grid_backend_benchmark.py                     # CUDA, into benchmarks/results/grid_backends
    python benchmarks/grid_backend_benchmark.py --repeats 50 --warmup 5
    python benchmarks/grid_backend_benchmark.py --device cpu --tiny # Triton's interpreter, 256 queries: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():  # the kernels run under Triton's interpreter; Triton reads this on its first import
    os.environ.setdefault("TRITON_INTERPRET", "1")

from diffusers_brics.models import MultiResolutionFeatureGrid  # noqa: E402

from decode_benchmark import time_interleaved  # noqa: E402  (beside this script)

PAPER_GRID = dict(input_dim=3, num_levels=16, features_per_level=4, log2_hashmap_size=18, min_resolution=16,
                  max_resolution=64, convention="torch-ngp", indexing="tiled")
QUERIES = (16_384, 1_048_576)
TINY_QUERIES = (256,)
BACKENDS = ("torch", "triton")
MODES = ("forward", "forward_backward")
GRADIENTS = ("forward", "grad_queries", "grad_table")


def lookup(grid: MultiResolutionFeatureGrid, backend: str, x: torch.Tensor, upstream: torch.Tensor | None = None
           ) -> torch.Tensor:
    """``grid.interpolate(x)`` ``(N, 64)`` on ``backend``: without gradients when ``upstream`` is None, else followed
    by the backward pass of ``<out, upstream>`` into ``x.grad`` and ``grid.embeddings.grad``."""
    grid.backend = backend
    if upstream is None:
        with torch.no_grad():
            return grid.interpolate(x)
    x.grad = grid.embeddings.grad = None
    out = grid.interpolate(x)
    out.backward(upstream)
    return out


def compare(grid: MultiResolutionFeatureGrid, x: torch.Tensor, upstream: torch.Tensor) -> dict[str, dict[str, float]]:
    """Largest absolute difference between the backends (and largest absolute torch value) of the output and of
    the gradients of the queries and the table."""
    results = {}
    for backend in BACKENDS:
        out = lookup(grid, backend, x, upstream).detach()
        results[backend] = (out, x.grad.clone(), grid.embeddings.grad.clone())
    return {name: {"max_abs_diff": float((ours - ref).abs().max()), "max_abs": float(ref.abs().max())}
            for name, ours, ref in zip(GRADIENTS, results["triton"], results["torch"])}


def time_backends(grid: MultiResolutionFeatureGrid, x: torch.Tensor, upstream: torch.Tensor, warmup: int,
                  repeats: int, sync: Callable[[], None]) -> dict[str, dict[str, float]]:
    """Median milliseconds of every (backend, mode), from ``repeats`` rounds that call each once, after ``warmup``."""
    calls = {(backend, mode): (lambda b=backend, m=mode: lookup(grid, b, x, upstream if m != "forward" else None))
             for backend in BACKENDS for mode in MODES}
    times = time_interleaved(calls, warmup, repeats, sync, inference=False, desc="look-ups")
    return {backend: {mode: 1e3 * statistics.median(times[backend, mode]) for mode in MODES} for backend in BACKENDS}


def run(device: torch.device, query_counts: tuple[int, ...], warmup: int, repeats: int) -> dict[str, Any]:
    """Build the paper's grid on ``device`` and compare and time both backends at each query count."""
    torch.manual_seed(0)
    grid = MultiResolutionFeatureGrid(**PAPER_GRID, backend="triton").to(device)
    torch.nn.init.normal_(grid.embeddings)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for count in query_counts:
        x = torch.rand(count, grid.input_dim, device=device, requires_grad=True)
        upstream = torch.randn(count, grid.num_levels * grid.features_per_level, device=device)
        agreement = compare(grid, x, upstream)
        timings = time_backends(grid, x, upstream, warmup, repeats, sync)
        speedup = {mode: timings["torch"][mode] / timings["triton"][mode] for mode in MODES}
        rows.append(dict(queries=count, ms=timings, speedup=speedup, agreement=agreement))
        print(f"{count} queries: " + ", ".join(
            f"{mode} torch {timings['torch'][mode]:.3f} ms, triton {timings['triton'][mode]:.3f} ms "
            f"({speedup[mode]:.2f}x)" for mode in MODES), flush=True)
    setup = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 triton_interpreter=device.type == "cpu", grid=PAPER_GRID, warmup=warmup, repeats=repeats,
                 torch=torch.__version__, triton=version("triton"))
    return dict(setup=setup, results=rows)


def format_report(results: dict[str, Any]) -> str:
    """A Markdown table of the timings and agreement, and a line describing the setup."""
    header = ["queries", "forward torch (ms)", "forward triton (ms)", "speed-up", "fwd+bwd torch (ms)",
              "fwd+bwd triton (ms)", "speed-up", "max abs diff: output / grad queries / grad table"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for row in results["results"]:
        cells = [f"{row['queries']:,}"]
        for mode in MODES:
            cells += [f"{row['ms']['torch'][mode]:.3f}", f"{row['ms']['triton'][mode]:.3f}",
                      f"{row['speedup'][mode]:.2f}x"]
        cells.append(" / ".join(f"{row['agreement'][name]['max_abs_diff']:.1e}" for name in GRADIENTS))
        lines.append("| " + " | ".join(cells) + " |")
    setup = results["setup"]
    where = "CPU, Triton's interpreter" if setup["triton_interpreter"] else setup["device"]
    lines += ["", f"{where}; median of {setup['repeats']} interleaved runs after {setup['warmup']} warm-up; "
              f"torch {setup['torch']}, triton {setup['triton']}. Grid: {setup['grid']}."]
    return "\n".join(lines)


def write_results(results: dict[str, Any], folder: Path, command: str) -> None:
    """``results.json`` and ``report.md`` (the command at the top, then the table) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"command": command, **results}, indent=2))
    parts = ["# Feature-grid backends: torch against Triton", "", f"`{command}`", "", format_report(results)]
    (folder / "report.md").write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (Triton's interpreter)")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_QUERIES[0]} queries only, for tests")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds, the first compiles (default 3)")
    parser.add_argument("--results_dir", default="benchmarks/results/grid_backends",
                        help="folder for results.json and report.md (default benchmarks/results/grid_backends)")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1 (the first run compiles the kernels)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; --device cpu --tiny runs under Triton's interpreter")
    try:
        from diffusers_brics.models import grid_triton
    except ImportError as error:
        parser.error(f"the Triton backend needs the triton package (pip install 'diffusers-brics[triton]'): {error}")
    if not grid_triton.runs_on(device):
        parser.error(f"the Triton kernels cannot take {device} tensors here (on a CPU they need TRITON_INTERPRET=1 "
                     "in the environment)")
    results = run(device, TINY_QUERIES if args.tiny else QUERIES, args.warmup, args.repeats)
    print(format_report(results))
    root = Path(__file__).resolve().parents[1]
    script = os.path.relpath(os.path.abspath(sys.argv[0]), root)
    write_results(results, Path(args.results_dir), shlex.join(["python", script, *sys.argv[1:]]))


if __name__ == "__main__":
    main()
