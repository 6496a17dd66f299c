"""Equal-budget reconstruction: BRICS against diffusers' AutoencoderKL and VQModel on the embedded 32x32 emoji.

The three autoencoders are trained by the same script (``examples/train_brics_ae.py --model_type ...``) with the
same steps, batch, seed, data and losses (L2 only by default, as ``train_ae_benchmark.py``: the perceptual and GAN
terms cost more than the autoencoders themselves at 32x32 on a CPU; arguments after ``--`` replace them), plus each
model's own term (KL 1e-6 summed, LDM's; VQ codebook + 0.25 commitment); the BRICS grids have their own learning
rate, 1e-2, as in the small-image recipe (the peers have no grids; everything else shares 2e-3). Code sizes are equal: an 8x8 code of 4
channels (``small-32`` presets; the VQ code is 8x8 indices into 1,024 entries of 4 dimensions). Then, on the
held-out split: PSNR / SSIM / LPIPS-alex, FID and KID of the reconstructions against the originals (the standard
FID Inception), decode GMACs, latency and parameters, the training step time of each (side by side in one process),
and the usage of the BRICS grids (reachable entries read per level, entries moved by training) beside the VQ
codebook's. Writes ``results.json``, ``report.md``, ``metrics.png``, ``usage.png`` and ``reconstructions.png``
into ``--output``; the trained models stay in ``OUTPUT/run/<model type>`` (git-ignored) for
``compare_generation.py``.

    python benchmarks/compare_autoencoders.py --steps 500
    python benchmarks/compare_autoencoders.py --tiny --no_fid --output /tmp/cmp   # the test's smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from diffusers_brics.evaluate import evaluate_reconstruction, image_batches, load_split
from diffusers_brics.models import adapters

from benchmark_runs import ROOT, run_shown, split_argv  # beside this script
from decode_benchmark import count_gmacs, count_params

MODEL_TYPES = ("brics", "autoencoderkl", "vqmodel")
NAMES = {"brics": "BRICS", "autoencoderkl": "AutoencoderKL", "vqmodel": "VQModel"}
DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0"]


def decode_modules(vae) -> list[torch.nn.Module]:
    """The modules a decode runs."""
    if adapters.model_type_of(vae) == "brics":
        return [vae.retrieval, vae.decoder]
    parts = [vae.post_quant_conv, vae.decoder]
    return parts + ([vae.quantize] if hasattr(vae, "quantize") else [])


def code_description(vae) -> str:
    channels, height, width = adapters.latent_shape(vae)
    kind = adapters.model_type_of(vae)
    if kind == "vqmodel":
        return f"{height}x{width} indices into {vae.config.num_vq_embeddings} x {channels}-d entries"
    return f"{height}x{width}x{channels} floats" + (" in [0, 1]" if kind == "brics" else "")


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


def codebook_usage(row: dict) -> float:
    """A VQModel row's share of codebook entries selected: ``codebook_usage``, or ``codebook_used`` in results
    saved before the key took the metric's name."""
    return row["codebook_usage"] if "codebook_usage" in row else row["codebook_used"]


def plot(results: dict, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [NAMES[k] for k in results["models"]]
    rows = list(results["models"].values())
    keys = [("psnr", "PSNR (dB), higher is better"), ("lpips", "LPIPS-alex, lower is better"),
            ("kid_mean", "KID of reconstructions, lower is better"), ("decode_gmacs", "decode GMACs per image")]
    keys = [(k, label) for k, label in keys if all(k in row for row in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, (key, label) in zip(axes, keys):
        ax.bar(names, [row[key] for row in rows], color=["tab:blue", "tab:orange", "tab:green"][: len(rows)])
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(output / "metrics.png", dpi=120)
    plt.close(fig)

    brics, vq = results["models"].get("brics"), results["models"].get("vqmodel")
    if brics is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.2))
    levels = range(len(brics["grid_usage_per_level"]))
    ax.plot(levels, brics["grid_usage_per_level"], "o-", label="BRICS: reachable entries read (held-out)")
    ax.plot(levels, brics["grid_trained_per_level"], "s--", label="BRICS: entries moved by training")
    if vq is not None:
        ax.axhline(codebook_usage(vq), color="tab:green", label="VQModel: codebook entries selected (held-out)")
    ax.set_xlabel("grid level (coarse to fine)")
    ax.set_ylabel("share of entries")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(output / "usage.png", dpi=120)
    plt.close(fig)


def report(results: dict) -> str:
    models = results["models"]
    lines = [
        "# Equal-budget reconstruction: BRICS vs AutoencoderKL vs VQModel", "",
        "```", results["command"], "```", "",
        f"Embedded 32x32 emoji, {results['held_out_images']} held-out images; {results['steps']} steps at batch "
        f"{results['batch_size']} for each model, seed 0, the same losses ({results['train_args']}) plus each "
        f"model's own term (BRICS grids: learning rate 1e-2). FID and KID compare the reconstructions with the "
        f"originals (KID on the whole split at once: no spread over subsets). torch {results['torch']}, {results['threads']} threads; timings are medians taken side "
        "by side in one process.", "",
        "| model | code | parameters | decode params | decode GMACs/img | decode ms/img (batch 64) | train step s "
        "(batch) | PSNR | SSIM | LPIPS | FID | KID (x1e3) | usage |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in models.items():
        fid = f"{row['fid']:.1f}" if "fid" in row else "-"
        kid = f"{1e3 * row['kid_mean']:.1f}" if "kid_mean" in row else "-"
        kid += f" ± {1e3 * row['kid_std']:.1f}" if round(1e3 * row.get("kid_std", 0), 1) else ""  # 0: one subset
        if kind == "brics":
            usage = f"grid levels {min(row['grid_usage_per_level']):.0%}–{max(row['grid_usage_per_level']):.0%} read"
        elif kind == "vqmodel":
            usage = f"codebook {codebook_usage(row):.0%} selected (perplexity {row['codebook_perplexity']:.0f})"
        else:
            usage = "-"
        lines.append(
            f"| {NAMES[kind]} | {row['code']} | {row['parameters'] / 1e6:.2f} M | {row['decode_parameters'] / 1e6:.2f} M "
            f"| {row['decode_gmacs']:.3f} | {1e3 * row['decode_seconds_per_image']:.2f} | {row['train_step_seconds']:.3f}"
            f" | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['lpips']:.3f} | {fid} | {kid} | {usage} |"
        )
    lines += ["", "![metrics](metrics.png)", "", "![usage](usage.png)", "",
              "Held-out originals (top row), then the reconstructions of BRICS, AutoencoderKL and VQModel:", "",
              "![reconstructions](reconstructions.png)", "", "## Goals", ""]
    lines += [f"- {goal}: **{'holds' if ok else 'does not hold'}** ({detail})" for goal, ok, detail in results["goals"]]
    return "\n".join(lines) + "\n"


def goals(models: dict) -> list[tuple[str, bool, str]]:
    out = []
    brics, kl, vq = (models.get(k) for k in MODEL_TYPES)
    if brics and kl:
        out.append(("BRICS reconstruction at least as good as AutoencoderKL's (PSNR and LPIPS)",
                    brics["psnr"] >= kl["psnr"] and brics["lpips"] <= kl["lpips"],
                    f"PSNR {brics['psnr']:.2f} vs {kl['psnr']:.2f} dB, LPIPS {brics['lpips']:.3f} vs {kl['lpips']:.3f}"))
        ratio = brics["decode_gmacs"] / kl["decode_gmacs"]
        out.append(("BRICS decode under half of AutoencoderKL's GMACs", ratio < 0.5, f"{ratio:.2f}x"))
    if brics and vq:
        dense = brics["grid_usage_per_level"][: brics["dense_levels"]]
        out.append(("dense-level grid usage above the VQ codebook's", min(dense) > codebook_usage(vq),
                    f"dense levels {min(dense):.0%}–{max(dense):.0%} vs codebook {codebook_usage(vq):.0%}"))
    return out


def main() -> None:
    argv, extra = split_argv(DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500, help="training steps of each model")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=list(MODEL_TYPES), choices=MODEL_TYPES)
    parser.add_argument("--tiny", action="store_true", help="tiny presets, 2 steps, 16 held-out images (a smoke run)")
    parser.add_argument("--no_fid", action="store_true", help="skip FID / KID")
    parser.add_argument("--skip_training", action="store_true", help="evaluate the models already in OUTPUT/run")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "compare_autoencoders"))
    args = parser.parse_args(argv)
    preset, steps = ("tiny", 2) if args.tiny else ("small-32", args.steps)
    max_images, repeats = (16, 1) if args.tiny else (None, 5)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    shown = {}
    for kind in args.models:
        run_dir = output / "run" / kind
        if args.skip_training:
            continue
        command = [
            sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--model_type", kind, "--preset", preset,
            "--output_dir", str(run_dir), "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps),
            "--validation_steps", str(steps), "--checkpointing_steps", str(steps), "--checkpoints_total_limit", "1",
            "--report_to", "none", "--seed", "0", *(["--max_eval_images", "16"] if args.tiny else []), *extra,
            *(["--grid_learning_rate", "1e-2"] if kind == "brics" else []),  # the grids' rate of the small-image recipe
        ]
        shown[kind] = run_shown(command)

    models = {kind: adapters.load_autoencoder(str(output / "run" / kind)).eval() for kind in args.models}
    size = next(iter(models.values())).config.sample_size
    held_out, column = load_split("held-out", size)
    train, train_column = load_split("train", size)
    images = next(image_batches(train, train_column, size, args.batch_size, desc="a training batch"))
    step_seconds = median_step_seconds(models, images, repeats)
    decode_seconds = median_decode_seconds(models, 64, repeats)
    rows, grids = {}, []
    for kind, vae in models.items():
        batches = image_batches(held_out, column, size, 64, max_images, f"evaluating {NAMES[kind]}")
        metrics, grid = evaluate_reconstruction(vae, batches, with_fid=not args.no_fid, num_grid_images=12)
        grids.append(grid)
        train_metrics = json.loads((output / "run" / kind / "metrics.json").read_text())
        z = adapters.encode_latents(vae, images[:1])
        row = {
            "command": shown.get(kind), "code": code_description(vae),
            "parameters": sum(p.numel() for p in vae.parameters()),
            "decode_parameters": count_params(decode_modules(vae)),
            "decode_gmacs": count_gmacs(lambda vae=vae, z=z: adapters.decode_latents(vae, z)),
            "decode_seconds_per_image": decode_seconds[kind] / 64,
            "train_step_seconds": step_seconds[kind],
            "train_images_per_second": args.batch_size / step_seconds[kind],
            "script_train_images_per_second": train_metrics.get("train_images_per_second"),
            "steps": train_metrics["step"],
            **{k: v for k, v in metrics.items() if not k.startswith(("grid_usage_level", "grid_trained_level"))},
        }
        if kind == "brics":
            levels = vae.config.grid_num_levels
            row["grid_usage_per_level"] = [metrics[f"grid_usage_level_{i}"] for i in range(levels)]
            row["grid_trained_per_level"] = [metrics[f"grid_trained_level_{i}"] for i in range(levels)]
            row["dense_levels"] = vae.retrieval.grids[0].num_dense_levels
        rows[kind] = row

    # originals once, then one row of reconstructions per model
    tile = grids[0].height // 2
    combined = Image.new("RGB", (grids[0].width, tile * (len(grids) + 1)))
    combined.paste(grids[0].crop((0, 0, grids[0].width, tile)), (0, 0))
    for i, grid in enumerate(grids, 1):
        combined.paste(grid.crop((0, tile, grid.width, 2 * tile)), (0, i * tile))
    combined.save(output / "reconstructions.png")

    results = {
        "command": "python benchmarks/compare_autoencoders.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
        "batch_size": args.batch_size, "train_args": " ".join(extra), "held_out_images": rows[args.models[0]]["images"],
        "models": rows,
    }
    results["goals"] = goals(rows)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, output)
    (output / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
