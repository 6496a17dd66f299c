"""Stage-1 training benchmark: a time-boxed run on the embedded emoji images, then its figures.

Runs ``examples/train_brics_ae.py`` for ``--minutes`` of training, then reports from the saved EMA model:
held-out PSNR / SSIM / LPIPS-alex, the share of reachable grid entries read at each level on the held-out
split (paper Figure 4b) and how it evolved over the run (validation every ``--validation_steps``, read back from
the tensorboard logs), the share that training moved from their initialisation, training throughput, and the
share of a training step spent in feature retrieval (forward + backward of `KeyCodeRetrieval` against a whole
autoencoder step on the same batch). Writes ``results.json``, ``report.md``, a grid-usage plot and the
reconstruction grid into ``--output``.

    python benchmarks/train_ae_benchmark.py --minutes 10
    python benchmarks/train_ae_benchmark.py --minutes 10 -- --perceptual_weight 5 --disc_start 1000

Arguments after ``--`` go to the training script. Defaults: preset ``small-32``, batch 32, L2 loss only
(the perceptual and GAN terms cost more time per step than the autoencoder itself at 32x32 on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.data import load_emoji_dataset
from diffusers_brics.metrics import GridUsage
from diffusers_brics.training.data import image_transform

from benchmark_runs import ROOT, fresh_run_dir, run_shown, split_argv  # beside this script

DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2"]


def median_seconds(fn, repeats: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_breakdown(model: BRICSAutoencoder, images: torch.Tensor) -> dict[str, float]:
    """Median seconds of a whole autoencoder step and of the retrieval's forward + backward in it, timed on a copy
    (the steps move the weights, and the grid statistics are read off the trained model)."""
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.99), eps=1e-15)

    def full_step():
        optimizer.zero_grad(set_to_none=True)
        F.mse_loss(model(images).sample, images).backward()
        optimizer.step()

    z = model.encode(images).latents.detach().requires_grad_(True)

    def retrieval_step():
        model.retrieval(z).square().mean().backward()

    step, retrieval = median_seconds(full_step), median_seconds(retrieval_step)
    return {"step_seconds": step, "retrieval_seconds": retrieval, "retrieval_share": retrieval / step}


def held_out_reads(model: BRICSAutoencoder, dataset) -> tuple[GridUsage, torch.Tensor]:
    """The grid reads of the held-out split, and its key codes ``(N, C_z, H_z, W_z)``."""
    transform = image_transform(model.config.sample_size, center_crop=True)
    usage = GridUsage(model.eval())
    codes = []
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            images = torch.stack([transform(image) for image in dataset[start : start + 64]["image"]])
            codes.append(model.encode(images).latents)
            usage.update(codes[-1])
    return usage, torch.cat(codes)


def unread_key_values(usage: GridUsage, codes: torch.Tensor) -> tuple[list[dict], float]:
    """Where the held-out split leaves reachable dense-level nodes unread, by the key value of the node.

    Returns, per dense level, the unread node count and the share of those at key values outside [0.1, 0.9]
    (with the key values of all unread nodes, for the plot), and the share of held-out key codes outside [0.1, 0.9].
    """
    grids, key_channels = usage.model.retrieval.grids, usage.model.retrieval.key_channels
    rows = []
    for level in range(grids[0].num_dense_levels):
        scale = grids[0].levels[level]["scale"]
        keys = torch.cat([usage.unread_nodes(g, level)[:, :key_channels] for g in range(len(grids))])
        values = ((keys.float() - 0.5) / scale).flatten()
        outer = ((values < 0.1) | (values > 0.9)).float().mean().item() if len(values) else 0.0
        rows.append({"level": level, "unread": len(keys), "outer_share": outer, "key_values": values.tolist()})
    codes_outer = ((codes < 0.1) | (codes > 0.9)).float().mean().item()
    return rows, codes_outer


def hits_per_entry(usage: GridUsage, level: int) -> list[dict]:
    """Per group, how often the entries of ``level`` were read (the statistic of paper Figure 4b): mean, standard
    deviation and 10th / 50th / 90th percentiles over the reachable nodes of a dense level, or every entry of a
    hashed one."""
    stats = []
    for grid, counts in zip(usage.model.retrieval.grids, usage.counts):
        hits = counts[usage.level_rows(grid, level)].float()
        p10, p50, p90 = torch.quantile(hits, torch.tensor([0.1, 0.5, 0.9])).tolist()
        stats.append({"mean": hits.mean().item(), "std": hits.std().item(), "p10": p10, "median": p50, "p90": p90})
    return stats


def validation_history(log_dir: Path, num_levels: int) -> list[dict]:
    """Held-out PSNR and per-level grid usage at each validation of the run, from its tensorboard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({path.parent for path in log_dir.rglob("events.out.tfevents.*")})
    scalars: dict[str, dict[int, float]] = {}
    for run in runs:
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({event.step: event.value for event in events.Scalars(tag)})
    steps = sorted(scalars.get("val/psnr", {}))
    return [{"step": step, "psnr": scalars["val/psnr"][step],
             "usage": [scalars[f"val/grid_usage_level_{level}"][step] for level in range(num_levels)]}
            for step in steps]


def plot_usage(levels: list[float], trained: list[float], unread: list[dict], history: list[dict], dense: int,
               hits: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no grid-usage plot (pip install matplotlib)")
        return False
    fig, ((ax, hist), (trend, spread)) = plt.subplots(2, 2, figsize=(12, 7))
    x = range(len(levels))
    ax.bar([i - 0.2 for i in x], [100 * v for v in levels], width=0.4, color="#4c72b0", label="read on held-out")
    ax.bar([i + 0.2 for i in x], [100 * v for v in trained], width=0.4, color="#dd8452", label="moved by training")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel("grid level (coarse -> fine)")
    ax.set_ylabel("reachable entries (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Grid usage (mean over groups)")
    for row in unread:
        hist.hist(row["key_values"], bins=40, range=(-0.05, 1.05), histtype="step", label=f"level {row['level']}")
    hist.set_xlabel("key value of the node")
    hist.set_ylabel("unread reachable nodes")
    hist.set_title("Where dense levels go unread")
    hist.legend(fontsize=7)
    for level in range(dense):
        trend.plot([h["step"] for h in history], [100 * h["usage"][level] for h in history], marker=".",
                   label=f"level {level}")
    trend.set_xlabel("training step")
    trend.set_ylabel("reachable entries read (%)")
    trend.set_title("Held-out usage of dense levels during training")
    trend.legend(fontsize=7)
    for offset, (name, h) in zip((-0.2, 0.2), hits.items()):
        groups = range(len(h["groups"]))
        medians = [g["median"] for g in h["groups"]]
        spread.errorbar([g + offset for g in groups], medians, fmt="o", capsize=3,
                        yerr=[[m - g["p10"] for m, g in zip(medians, h["groups"])],
                              [g["p90"] - m for m, g in zip(medians, h["groups"])]],
                        label=f"{name} (level {h['level']})")
    spread.set_xticks(list(range(len(next(iter(hits.values()))["groups"]))))
    spread.set_xlabel("group")
    spread.set_ylabel("held-out reads per entry")
    spread.set_title("Reads per entry: median, 10th-90th pct. (cf. Fig. 4b)")
    spread.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    argv, extra = split_argv(DEFAULT_TRAIN_ARGS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--preset", default="small-32")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--validation_steps", type=int, default=300,
                        help="held-out validation every N steps, for the usage-over-training curve")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "train_ae_small32"))
    args = parser.parse_args(argv)

    output = Path(args.output)
    run_dir = fresh_run_dir(output)
    command = [
        sys.executable, str(ROOT / "examples" / "train_brics_ae.py"), "--preset", args.preset,
        "--output_dir", str(run_dir), "--train_batch_size", str(args.batch_size),
        "--max_train_seconds", str(args.minutes * 60), "--max_train_steps", "100000000",
        "--validation_steps", str(args.validation_steps), "--checkpointing_steps", "100000000",
        "--report_to", "tensorboard", *extra,
    ]
    shown = run_shown(command)
    metrics = json.loads((run_dir / "metrics.json").read_text())

    model = BRICSAutoencoder.from_pretrained(run_dir / "autoencoder")
    resolution = model.config.sample_size
    dataset = load_emoji_dataset(32 if resolution <= 32 else 64, "train")
    transform = image_transform(resolution)
    images = torch.stack([transform(dataset[i]["image"]) for i in range(args.batch_size)])
    breakdown = step_breakdown(model, images)

    levels = [metrics[f"grid_usage_level_{i}"] for i in range(model.config.grid_num_levels)]
    dense = model.retrieval.grids[0].num_dense_levels
    usage, codes = held_out_reads(model, load_emoji_dataset(32 if resolution <= 32 else 64, "test"))
    unread, codes_outer = unread_key_values(usage, codes)
    finest = {"finest dense": dense - 1, "maximum resolution": model.config.grid_num_levels - 1}
    hits = {name: {"level": level, "groups": hits_per_entry(usage, level)} for name, level in finest.items()}
    trained = GridUsage.trained_entries(model).hit_fraction().mean(dim=0).tolist()
    history = validation_history(run_dir / "logs", model.config.grid_num_levels)
    results = {
        "command": shown,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in metrics.items() if not k.startswith("grid_usage_level_")},
        "grid_usage_per_level": levels,
        "dense_levels": dense,
        "unread_dense_nodes": [row["unread"] for row in unread],
        "unread_dense_nodes_outer_key_share": [row["outer_share"] for row in unread],
        "key_codes_outer_share": codes_outer,
        "grid_trained_per_level": trained,
        "hits_per_entry": hits,
        "validation_history": history,
        **breakdown,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    shutil.copy(run_dir / "reconstructions.png", output / "reconstructions.png")
    has_plot = plot_usage(levels, trained, unread, history, dense, hits, output / "grid_usage.png")
    report = [
        f"# Stage-1 training benchmark: `{args.preset}`, {args.minutes:g} minutes",
        "",
        f"`{results['command']}` (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| training steps | {metrics['step']} (batch {args.batch_size}) |",
        f"| throughput | {metrics['train_images_per_second']:.1f} images/s |",
        f"| held-out PSNR | {metrics['psnr']:.2f} dB |",
        f"| held-out SSIM | {metrics['ssim']:.4f} |",
        f"| held-out LPIPS (AlexNet) | {metrics['lpips']:.4f} |",
        f"| retrieval share of a training step | {100 * breakdown['retrieval_share']:.1f}% "
        f"({breakdown['retrieval_seconds']:.3f} s of {breakdown['step_seconds']:.3f} s) |",
        f"| reachable grid entries read, dense levels 0-{dense - 1} | "
        + ", ".join(f"{100 * v:.1f}%" for v in levels[:dense]) + " |",
        "| grid entries read, hashed levels | " + (", ".join(f"{100 * v:.1f}%" for v in levels[dense:]) or "none")
        + " |",
        "| unread reachable nodes, dense levels (all groups) | " + ", ".join(str(r["unread"]) for r in unread) + " |",
        "| ... of them at key values outside [0.1, 0.9] | "
        + ", ".join(f"{100 * r['outer_share']:.0f}%" for r in unread) + " |",
        f"| held-out key codes outside [0.1, 0.9] | {100 * codes_outer:.1f}% |",
        "| reachable entries training moved from their initialisation, dense levels | "
        + ", ".join(f"{100 * v:.1f}%" for v in trained[:dense]) + " |",
        *(f"| held-out reads per entry, {name} level {h['level']}, per group: median (10th-90th percentile) | "
          + ", ".join(f"{g['median']:.0f} ({g['p10']:.0f}-{g['p90']:.0f})" for g in h["groups"]) + " |"
          for name, h in hits.items()),
        "",
        "Held-out usage over the run (validation of the EMA model):",
        "",
        "| step | PSNR (dB) | dense levels, reachable entries read (%) |",
        "|---|---|---|",
        *(f"| {h['step']} | {h['psnr']:.2f} | " + ", ".join(f"{100 * v:.1f}" for v in h["usage"][:dense]) + " |"
          for h in history),
        "",
        "![reconstructions](reconstructions.png)",
    ]
    if has_plot:
        report += ["", "![grid usage](grid_usage.png)"]
    (output / "report.md").write_text("\n".join(report) + "\n")
    shutil.rmtree(run_dir / "logs", ignore_errors=True)
    print("\n".join(report))


if __name__ == "__main__":
    main()
