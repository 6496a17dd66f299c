"""Which part of the release's architecture changes grid usage and PSNR at small scale: short stage-1 runs.

Trains ``small-32`` with one release part at a time swapped for this package's first layout, for ``--steps``
steps each (batch 32, L2 loss, the stage-1 benchmark's flags, no EMA so that the live weights are measured), and
reports held-out PSNR (deterministic decode) and the share of reachable entries the held-out key codes read per
dense level. Training is seeded, so the figures repeat exactly on any machine; only the seconds differ.

    python benchmarks/ablate_release_parts.py --steps 300

Writes ``results.json`` and ``report.md`` into ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffusers_brics import BRICSAutoencoder

from benchmark_runs import ROOT, RESULTS, fresh_run_dir, run_shown  # beside this script

FIRST_ENCODER = dict(encoder_layout="diffusers", encoder_block_out_channels=(32, 64, 64), encoder_norm_num_groups=32)
VARIANTS = {
    "release (small-32)": {},
    "encoder: diffusers' (first layout)": FIRST_ENCODER,
    "encoder: diffusers', no mid-block attention": {**FIRST_ENCODER, "encoder_mid_block_attention": False},
    "encoder: taming, no attention": dict(encoder_attention_resolutions=()),
    "encoder: taming, 64 / 128 / 256 channels": dict(encoder_block_out_channels=(64, 128, 256),
                                                     encoder_norm_num_groups=32),
    "F_mlp: plain": dict(retrieval_mlp="plain"),
    "decoder style: mapping network on pooled f": dict(decoder_style="feature_block", mapping_layers=2),
}
FLAGS = ["--train_batch_size", "32", "--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2",
         "--no-use_ema", "--no-eval_with_noise", "--report_to", "none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output", default=str(RESULTS / "ablate_release_parts"))
    args = parser.parse_args()
    output = Path(args.output)
    run_dir = fresh_run_dir(output)
    rows = []
    for name, overrides in VARIANTS.items():
        folder = run_dir / f"variant{len(rows)}"
        BRICSAutoencoder.from_preset("small-32", **overrides).save_config(folder / "config")
        command = [sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--model_config_name_or_path",
                   str(folder / "config"), "--output_dir", str(folder), "--max_train_steps", str(args.steps),
                   "--validation_steps", str(args.steps), "--checkpointing_steps", str(10 * args.steps), *FLAGS]
        run_shown(command)
        metrics = json.loads((folder / "metrics.json").read_text())
        dense = BRICSAutoencoder.from_pretrained(folder / "autoencoder").retrieval.grids[0].num_dense_levels
        rows.append({"variant": name, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in overrides.items()},
                     "psnr": metrics["psnr"], "train_seconds": metrics["train_seconds"],
                     "dense_usage": [metrics[f"grid_usage_level_{i}"] for i in range(dense)]})
    (output / "results.json").write_text(json.dumps({"steps": args.steps, "flags": FLAGS, "rows": rows}, indent=2))
    report = [f"# Release parts, one at a time: `small-32`, {args.steps} steps", "",
              f"Flags: `{' '.join(FLAGS)}`; held-out split of the embedded emoji (393 images).", "",
              "| variant | held-out PSNR (dB) | reachable entries read, dense levels (%) | training seconds |",
              "|---|---|---|---|"]
    report += [f"| {r['variant']} | {r['psnr']:.2f} | " + ", ".join(f"{100 * v:.1f}" for v in r["dense_usage"])
               + f" | {r['train_seconds']:.0f} |" for r in rows]
    (output / "report.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))


if __name__ == "__main__":
    main()
