"""Stage-1 training benchmark: a time-boxed run on the embedded emoji images, then its figures.

Runs ``examples/train_brics_ae.py`` for ``--minutes`` of training, then reports from the saved EMA model:
held-out PSNR / SSIM / LPIPS-alex, the share of reachable grid entries read at each level on the held-out
split (paper Figure 4b) and how it evolved over the run (validation every ``--validation_steps``, read back from
the tensorboard logs), where the unread entries lie (key value; position in the image, beside how much the
held-out images vary there), the share that training moved from their initialisation, training throughput, and
the share of a training step spent in feature retrieval (forward + backward of `KeyCodeRetrieval` against a whole
autoencoder step on the same batch). Writes ``results.json``, ``report.md``, a grid-usage plot and the
reconstruction grid into ``--output``.

    python benchmarks/train_ae_benchmark.py --minutes 10
    python benchmarks/train_ae_benchmark.py --minutes 10 -- --perceptual_weight 5 --disc_start 1000

Arguments after ``--`` go to the training script (they replace the default ones below). Its data flags
(``--dataset_name``, ``--train_data_dir``, ...) apply to the benchmark's own figures too: they are read off the
held-out split the script used. Defaults: preset ``small-32``, batch 32, the embedded emoji images, L2 loss only
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
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.metrics import GridUsage
from diffusers_brics.training.autoencoder_args import parse_args
from diffusers_brics.training.data import image_column_of, image_transform, load_image_datasets
from diffusers_brics.training.autoencoder_evaluation import evaluation_loader, reconstruction_metrics

from benchmark_runs import ROOT, RESULTS, fresh_run_dir, run_shown, split_argv  # beside this script

DEFAULT_TRAIN_ARGS = ["--perceptual_weight", "0", "--gan_weight", "0", "--grid_learning_rate", "1e-2"]
BORDER = 1 / 8  # the band along each edge of the image that the report and plot set apart from the inside


def script_data(script_argv: list[str], sample_size: int):
    """``(train, held_out, image_column, resolution)``: the data the training script read (``sample_size``: its
    model's), from its own settings and loader, so the benchmark reads the script's held-out split."""
    config = parse_args(script_argv)
    resolution, data = config.resolution or sample_size, config.data
    train, held_out = load_image_datasets(data.dataset_name, data.dataset_config_name, data.train_data_dir,
                                          resolution, data.cache_dir, config.validation_fraction, config.loop.seed)
    return train, held_out, image_column_of(train, data.image_column), resolution


def held_out_metrics(model: BRICSAutoencoder, held_out, column: str, resolution: int) -> dict[str, dict]:
    """Held-out PSNR / SSIM / LPIPS-alex of the saved model by the script's own evaluation, both ways: the
    deterministic decode (no relaxed-precision noise, fixed decoder noise) and the release's measurement (both
    noises drawn, from seed 0)."""
    transform = image_transform(resolution, center_crop=True)
    loader = evaluation_loader(held_out, column, resolution, 64)
    fixed = torch.stack([transform(held_out[i][column]) for i in range(2)])
    out = {}
    for name, with_noise in (("deterministic", False), ("with_noise", True)):
        metrics, _ = reconstruction_metrics(model.eval(), loader, fixed, with_noise=with_noise)
        out[name] = {k: metrics[k] for k in ("psnr", "ssim", "lpips")}
    return out


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

    def retrieval_step():  # the feature block and, where the grids give it, the decoder's style
        sum(out.square().mean() for out in model.retrieval(z) if out is not None).backward()

    step, retrieval = median_seconds(full_step), median_seconds(retrieval_step)
    return {"step_seconds": step, "retrieval_seconds": retrieval, "retrieval_share": retrieval / step}


def split_reads(model: BRICSAutoencoder, dataset, column: str, resolution: int
                ) -> tuple[GridUsage, torch.Tensor, torch.Tensor]:
    """The grid reads of a split's images (centre crops, no flips, no relaxed-precision noise), their key codes
    ``(N, C_z, H_z, W_z)``, and how much the images vary at each pixel ``(resolution, resolution)``: the standard
    deviation over images, averaged over RGB."""
    transform = image_transform(resolution, center_crop=True)
    usage = GridUsage(model.eval())
    codes, total, squares = [], 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(dataset), 64):
            images = torch.stack([transform(image) for image in dataset[start : start + 64][column]]).double()
            codes.append(model.encode(images.float()).latents)
            usage.update(codes[-1])
            total, squares = total + images.sum(0), squares + images.square().sum(0)
    n = len(dataset)
    variance = (squares - total.square() / n) / max(n - 1, 1)
    return usage, torch.cat(codes), variance.clamp_min(0).sqrt().mean(0).float()


def unread_node_positions(usage: GridUsage, level: int) -> torch.Tensor:
    """``(M, D)`` positions of a dense level's unread reachable nodes, all groups: node ``n`` of an axis sits at
    ``(n - 0.5) / scale`` (the key axes first, then row, column), so the outermost nodes lie up to a cell outside
    ``[0, 1]``."""
    grids = usage.model.retrieval.grids
    nodes = torch.cat([usage.unread_nodes(g, level) for g in range(len(grids))])
    return (nodes.float() - 0.5) / grids[0].levels[level]["scale"]


def near_edge(t: torch.Tensor) -> torch.Tensor:
    """Which values of ``t`` (positions in ``[0, 1]`` along an image side) lie within ``BORDER`` of an edge."""
    return (t < BORDER) | (t > 1 - BORDER)


def share(mask: torch.Tensor) -> float:
    """The share of true values in a boolean tensor (0 when it is empty)."""
    return mask.float().mean().item() if len(mask) else 0.0


def unread_dense_nodes(usage: GridUsage, codes: torch.Tensor) -> tuple[list[dict], float]:
    """Where the held-out split leaves reachable dense-level nodes unread.

    Returns, per dense level, the unread node count, the share of those at key values outside [0.1, 0.9] and the
    share within ``BORDER`` of an edge of the image (with the nodes' key values and image positions ``(M, 2)``, for
    the plot); and the share of held-out key codes outside [0.1, 0.9].
    """
    key_channels = usage.model.retrieval.key_channels
    rows = []
    for level in range(usage.model.retrieval.grids[0].num_dense_levels):
        positions = unread_node_positions(usage, level)
        keys, pixels = positions[:, :key_channels].flatten(), positions[:, -2:]
        rows.append({"level": level, "unread": len(positions), "outer_share": share((keys < 0.1) | (keys > 0.9)),
                     "border_share": share(near_edge(pixels).any(dim=-1)), "key_values": keys.tolist(),
                     "positions": pixels})
    codes_outer = ((codes < 0.1) | (codes > 0.9)).float().mean().item()
    return rows, codes_outer


def band_mean(pixel_map: torch.Tensor, border: bool) -> float:
    """Mean of an ``(H, W)`` map over the pixels whose centres lie within ``BORDER`` of an edge (or the others)."""
    h, w = pixel_map.shape
    mask = near_edge((torch.arange(h) + 0.5) / h)[:, None] | near_edge((torch.arange(w) + 0.5) / w)[None, :]
    return pixel_map[mask if border else ~mask].mean().item()


def hits_per_entry(usage: GridUsage, level: int) -> list[dict]:
    """Per group, how often the entries of ``level`` were read (the statistic of paper Figure 4b, in the report a VQ
    codebook gets): share read, mean, standard deviation and 10th / 50th / 90th percentiles over the reachable nodes
    of a dense level, or every entry of a shared one."""
    return [usage.level_summary(group, level) for group in range(len(usage.counts))]


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
               hits: dict, scale: float, node_count: int, pixel_std: torch.Tensor, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no grid-usage plot (pip install matplotlib)")
        return False
    fig, ((ax, hist, where), (trend, spread, varies)) = plt.subplots(2, 3, figsize=(17, 7))
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
    positions = unread[-1]["positions"]  # the finest dense level's
    edges = ((torch.arange(node_count + 1) - 1) / scale).numpy()  # node n's cell: [(n - 1) / scale, n / scale)
    image = where.hist2d(positions[:, 0].numpy(), positions[:, 1].numpy(), bins=[edges, edges], cmap="magma")[3]
    where.set_xlim(edges[0], edges[-1])
    where.set_ylim(edges[-1], edges[0])
    where.set_aspect("equal")
    fig.colorbar(image, ax=where, label="unread nodes (all groups and key values)")
    where.set_title(f"Unread nodes of level {dense - 1} by image position")
    image = varies.imshow(pixel_std.numpy(), cmap="viridis", extent=(0, 1, 1, 0))
    fig.colorbar(image, ax=varies, label="std over images (mean over RGB)")
    varies.set_title("How much held-out images vary, per pixel")
    for panel in (where, varies):
        panel.add_patch(plt.Rectangle((BORDER, BORDER), 1 - 2 * BORDER, 1 - 2 * BORDER, fill=False,
                                      edgecolor="white", linestyle="--"))
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
    parser.add_argument("--output", default=str(RESULTS / "train_ae_small32"))
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
    train_set, held_out, column, resolution = script_data(command[2:], model.config.sample_size)
    transform = image_transform(resolution)
    images = torch.stack([transform(train_set[i][column]) for i in range(args.batch_size)])
    breakdown = step_breakdown(model, images)
    both = held_out_metrics(model, held_out, column, resolution)

    levels = [metrics[f"grid_usage_level_{i}"] for i in range(model.config.grid_num_levels)]
    dense = model.retrieval.grids[0].num_dense_levels
    usage, codes, pixel_std = split_reads(model, held_out, column, resolution)
    read_by_train = split_reads(model, train_set, column, resolution)[0].hit_fraction().mean(dim=0).tolist()
    unread, codes_outer = unread_dense_nodes(usage, codes)
    finest = {"finest dense": dense - 1, "maximum resolution": model.config.grid_num_levels - 1}
    hits = {name: {"level": level, "groups": hits_per_entry(usage, level)} for name, level in finest.items()}
    trained = GridUsage.trained_entries(model).hit_fraction().mean(dim=0).tolist()
    history = validation_history(run_dir / "logs", model.config.grid_num_levels)
    results = {
        "command": shown,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in metrics.items() if not k.startswith("grid_usage_level_")},
        "held_out_metrics": both,
        "grid_usage_per_level": levels,
        "dense_levels": dense,
        "unread_dense_nodes": [row["unread"] for row in unread],
        "unread_dense_nodes_outer_key_share": [row["outer_share"] for row in unread],
        "unread_dense_nodes_border_share": [row["border_share"] for row in unread],
        "held_out_images": len(held_out),
        "key_codes_outer_share": codes_outer,
        "grid_trained_per_level": trained,
        "grid_usage_training_images_per_level": read_by_train,
        "hits_per_entry": hits,
        "validation_history": history,
        **breakdown,
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    shutil.copy(run_dir / "reconstructions.png", output / "reconstructions.png")
    finest_plan = model.retrieval.grids[0].levels[dense - 1]
    has_plot = plot_usage(levels, trained, unread, history, dense, hits, finest_plan["scale"],
                          finest_plan["nodes_per_axis"], pixel_std, output / "grid_usage.png")
    report = [
        f"# Stage-1 training benchmark: `{args.preset}`, {args.minutes:g} minutes",
        "",
        f"`{results['command']}` (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "",
        "| figure | value |",
        "|---|---|",
        f"| training steps | {metrics['step']} (batch {args.batch_size}) |",
        f"| throughput | {metrics['train_images_per_second']:.1f} images/s |",
        *(f"| held-out PSNR / SSIM / LPIPS-alex, {label} | {both[key]['psnr']:.2f} dB / {both[key]['ssim']:.4f} / "
          f"{both[key]['lpips']:.4f} |"
          for key, label in (("deterministic", "deterministic decode"),
                             ("with_noise", "with relaxed-precision and decoder noise (the release's measure)"))),
        f"| retrieval share of a training step | {100 * breakdown['retrieval_share']:.1f}% "
        f"({breakdown['retrieval_seconds']:.3f} s of {breakdown['step_seconds']:.3f} s) |",
        f"| reachable grid entries read, dense levels 0-{dense - 1} | "
        + ", ".join(f"{100 * v:.1f}%" for v in levels[:dense]) + " |",
        f"| grid entries read, {model.config.grid_indexing} levels | "
        + (", ".join(f"{100 * v:.1f}%" for v in levels[dense:]) or "none")
        + " |",
        "| unread reachable nodes, dense levels (all groups) | " + ", ".join(str(r["unread"]) for r in unread) + " |",
        "| ... of them at key values outside [0.1, 0.9] | "
        + ", ".join(f"{100 * r['outer_share']:.0f}%" for r in unread) + " |",
        f"| ... of them within {Fraction(BORDER).limit_denominator()} of the image's side from an edge "
        f"({100 * (1 - (1 - 2 * BORDER) ** 2):.0f}% of its area) | "
        + ", ".join(f"{100 * r['border_share']:.0f}%" for r in unread) + " |",
        f"| held-out images; their key codes outside [0.1, 0.9] | {len(held_out)}; {100 * codes_outer:.1f}% |",
        "| held-out pixel variation (std over images, mean over RGB): outer band; inside | "
        f"{band_mean(pixel_std, True):.3f}; {band_mean(pixel_std, False):.3f} |",
        f"| reachable entries read by the {len(train_set)} training images (centre crops, no flips), dense levels | "
        + ", ".join(f"{100 * v:.1f}%" for v in read_by_train[:dense]) + " |",
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
