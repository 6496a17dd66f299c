"""Decode cost of BRICS against diffusers' AutoencoderKL and VQModel at 256x256, batch 1, on CPU.

Three untrained decoders are built side by side in one process:

* BRICS, preset ``paper-64x64x4``: key codes ``(1, 4, 64, 64)`` in ``[0, 1]`` -> feature retrieval from the
  multi-resolution grids (``m.retrieval``) -> StyleGAN2-style synthesis (``m.decoder``);
* ``AutoencoderKL`` in the Stable Diffusion layout: latents ``(1, 4, 32, 32)`` -> ``post_quant_conv`` -> decoder;
* ``VQModel`` in the VQGAN-f16 layout: latents ``(1, 256, 16, 16)`` -> quantisation -> ``post_quant_conv`` ->
  decoder (``VQModel.decode`` with its default ``force_not_quantize=False``).

For each it reports the parameters of the decode path, the decode GMACs counted by
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; only matrix multiplications and convolutions
are counted, so grid look-ups, normalisations and the VQ nearest-neighbour search add no MACs), and the
median decode latency under ``torch.inference_mode()`` with its ratio to AutoencoderKL. Latencies are taken
after warm-up runs, with the timed runs interleaved round-robin across all models so that drift of the
machine affects them equally. BRICS retrieval and synthesis are also timed separately (interleaved in the
same loop) to give the share of BRICS decode time spent in feature retrieval. Finally the goals
"BRICS decode <= 0.30x AutoencoderKL latency" and "retrieval < 10% of BRICS decode" are checked.

Run from the repository root::

    python benchmarks/decode_benchmark.py                # plain-text table
    python benchmarks/decode_benchmark.py --markdown     # Markdown table for a README
    python benchmarks/decode_benchmark.py --repeats 11 --warmup 3 --output decode.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, VQModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from diffusers_brics import BRICSAutoencoder

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm ships with huggingface_hub
    tqdm = None

LATENCY_GOAL = 0.30  # BRICS decode latency / AutoencoderKL decode latency
RETRIEVAL_GOAL = 0.10  # retrieval time / BRICS decode time
REFERENCE = "AutoencoderKL"


def build_models() -> dict[str, tuple[list[nn.Module], Callable[[], Any]]]:
    """Per model: the modules on its decode path and a zero-argument decode call on a fixed random input."""
    torch.manual_seed(0)
    brics = BRICSAutoencoder.from_preset("paper-64x64x4").eval()
    kl = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=256,
    ).eval()
    vq = VQModel(
        block_out_channels=(128, 128, 256, 256, 512), down_block_types=("DownEncoderBlock2D",) * 5,
        up_block_types=("UpDecoderBlock2D",) * 5, latent_channels=256, num_vq_embeddings=1024, vq_embed_dim=256,
        layers_per_block=2, sample_size=256,
    ).eval()
    z_brics = torch.rand(1, *brics.latent_shape)
    z_kl = torch.randn(1, 4, 32, 32)
    z_vq = torch.randn(1, 256, 16, 16)
    with torch.inference_mode():
        features, style = brics.retrieval(z_brics)
    return {
        "BRICS (paper-64x64x4)": ([brics.retrieval, brics.decoder], lambda: brics.decode(z_brics).sample),
        REFERENCE: ([kl.post_quant_conv, kl.decoder], lambda: kl.decode(z_kl).sample),
        "VQModel (VQGAN-f16)": ([vq.quantize, vq.post_quant_conv, vq.decoder], lambda: vq.decode(z_vq).sample),
        # Timed only, for the retrieval share of BRICS decode.
        "BRICS retrieval": ([brics.retrieval], lambda: brics.retrieval(z_brics)),
        "BRICS synthesis": ([brics.decoder], lambda: brics.decoder(features, style)),
    }


def count_params(modules: Iterable[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def count_gmacs(fn: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return counter.get_total_flops() / 2 / 1e9


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per call: ``warmup`` untimed then ``repeats`` timed rounds, each round calling every model once."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    rounds = warmup + repeats
    bar = tqdm(total=rounds * len(fns), desc="decoding", unit="run") if tqdm else None
    with torch.inference_mode():
        for r in range(rounds):
            if bar is None:
                print(f"{'warm-up' if r < warmup else 'timed'} round {r + 1}/{rounds}", flush=True)
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
                if r >= warmup:
                    times[name].append(elapsed)
                if bar is not None:
                    bar.set_postfix_str(name, refresh=False)
                    bar.update()
    if bar is not None:
        bar.close()
    return times


def run(warmup: int, repeats: int) -> dict[str, Any]:
    models = build_models()
    times = time_interleaved({name: fn for name, (_, fn) in models.items()}, warmup, repeats)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [
        dict(
            model=name,
            decode_params_M=count_params(modules) / 1e6,
            decode_GMACs=count_gmacs(fn),
            median_latency_s=medians[name],
            ratio_vs_AutoencoderKL=medians[name] / medians[REFERENCE],
            latencies_s=times[name],
        )
        for name, (modules, fn) in list(models.items())[:3]
    ]
    retrieval, synthesis = medians["BRICS retrieval"], medians["BRICS synthesis"]
    share = retrieval / (retrieval + synthesis)
    ratio = rows[0]["ratio_vs_AutoencoderKL"]
    return dict(
        setup=dict(
            resolution=256, batch_size=1, device="cpu", threads=torch.get_num_threads(), warmup=warmup,
            repeats=repeats, torch=torch.__version__, diffusers=diffusers.__version__,
            python=platform.python_version(), machine=platform.processor() or platform.machine(),
        ),
        models=rows,
        brics_split=dict(
            retrieval_median_s=retrieval, synthesis_median_s=synthesis, retrieval_share=share,
            retrieval_latencies_s=times["BRICS retrieval"], synthesis_latencies_s=times["BRICS synthesis"],
        ),
        goals=dict(
            latency_ratio=dict(goal=LATENCY_GOAL, value=ratio, passed=ratio <= LATENCY_GOAL),
            retrieval_share=dict(goal=RETRIEVAL_GOAL, value=share, passed=share < RETRIEVAL_GOAL),
        ),
    )


def format_report(results: dict[str, Any], markdown: bool) -> str:
    header = ["model", "decode params (M)", "decode GMACs", "median latency (s)", "ratio vs AutoencoderKL"]
    rows = [
        [r["model"], f"{r['decode_params_M']:.2f}", f"{r['decode_GMACs']:.2f}", f"{r['median_latency_s']:.3f}",
         f"{r['ratio_vs_AutoencoderKL']:.2f}x"]
        for r in results["models"]
    ]
    split, goals, setup = results["brics_split"], results["goals"], results["setup"]
    verdict = {name: "PASS" if g["passed"] else "FAIL" for name, g in goals.items()}
    share_line = (
        f"BRICS retrieval share: {split['retrieval_share']:.1%} (retrieval {split['retrieval_median_s']:.3f} s, "
        f"synthesis {split['synthesis_median_s']:.3f} s, medians)"
    )
    goal_line = (
        f"Goals: BRICS decode <= {LATENCY_GOAL:.2f}x AutoencoderKL latency: {verdict['latency_ratio']} "
        f"({goals['latency_ratio']['value']:.2f}x); retrieval < {RETRIEVAL_GOAL:.0%} of BRICS decode: "
        f"{verdict['retrieval_share']} ({goals['retrieval_share']['value']:.1%})"
    )
    setup_line = (
        f"256x256, batch 1, CPU ({setup['threads']} threads), median of {setup['repeats']} interleaved runs after "
        f"{setup['warmup']} warm-up; torch {setup['torch']}, diffusers {setup['diffusers']}"
    )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * 4) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines + ["", setup_line + ".", "", share_line + ".", "", goal_line + "."])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

    def fmt(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(header))
    return "\n".join([setup_line, "", fmt(header), rule, *map(fmt, rows), rule, share_line, goal_line])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per model (default 2)")
    parser.add_argument("--output", help="also write the results as JSON to this path")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of plain text")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    results = run(args.warmup, args.repeats)
    print(format_report(results, args.markdown))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
