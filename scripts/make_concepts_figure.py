"""Draw the concepts figure of the documentation (docs/images/concepts.png): BRICS's vocabulary in three panels.

(a) key codes: an encoder's (H_z, W_z) map of one channel, tiled (repeat_interleave) to the feature block's (H_d, W_d);
(b) feature retrieval: a query q = (x, y, key) looks up the cell around it in each level of a multi-resolution feature
    grid (drawn as the (x, key) plane), its features interpolated from the cell's corners;
(c) relaxed precision: in training, each key code gets N(0, (1 / (4 r_max))^2) noise, a quarter of the finest
    level's cell, so that the decoder tolerates the small errors a diffusion model's samples carry.

    python scripts/make_concepts_figure.py [--output docs/images/concepts.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def key_code_panel(ax_codes, ax_tiled, rng: np.random.Generator) -> None:
    """(a): a 4x4 key-code channel and its 2x tiling to 8x8."""
    codes = rng.uniform(0, 1, size=(4, 4))
    tiled = codes.repeat(2, axis=0).repeat(2, axis=1)
    for ax, image, title in (
        (ax_codes, codes, "key codes z\n(H_z x W_z, one channel), in [0, 1]"),
        (ax_tiled, tiled, "tiled to the feature block\n(H_d x W_d = 2 H_z x 2 W_z)"),
    ):
        ax.imshow(image, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for i in range(image.shape[0]):
            for j in range(image.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{image[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=6 if image.shape[0] > 4 else 8,
                    color="white" if image[i, j] < 0.6 else "black",
                )


def retrieval_panel(ax) -> None:
    """(b): the (x, key) plane of three grid levels, a query and the corners it interpolates at each level."""
    query = np.array([0.62, 0.37])
    colours = {2: "tab:blue", 4: "tab:orange", 8: "tab:green"}
    for resolution, colour in colours.items():
        ticks = np.linspace(0, 1, resolution + 1)
        for tick in ticks:
            ax.axvline(tick, color=colour, lw=0.6, alpha=0.5)
            ax.axhline(tick, color=colour, lw=0.6, alpha=0.5)
        low = np.floor(query * resolution) / resolution
        corners = np.array([[low[0] + dx / resolution, low[1] + dy / resolution] for dx in (0, 1) for dy in (0, 1)])
        ax.scatter(corners[:, 0], corners[:, 1], s=28, color=colour, zorder=3, label=f"level r = {resolution}")
        ax.add_patch(plt.Rectangle(low, 1 / resolution, 1 / resolution, fill=False, edgecolor=colour, lw=1.8))
    ax.scatter(*query, marker="*", s=160, color="crimson", zorder=4, label="query q = (x, y, key)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("pixel coordinate x  (y: a third axis)", fontsize=8)
    ax.set_ylabel("key code value", fontsize=8)
    ax.set_title(
        "feature retrieval: per level the cell around q,\nits corners' features interpolated (D-linear)", fontsize=9
    )
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    ax.tick_params(labelsize=7)


def relaxed_precision_panel(ax, r_max: int = 8) -> None:
    """(c): the finest level's nodes on the key axis, a key code and the density of its training noise."""
    sigma = 1 / (4 * r_max)
    key = 0.3
    grid = np.linspace(0, 1, 2001)
    density = np.exp(-0.5 * ((grid - key) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    ax.plot(grid, density / density.max(), color="crimson", lw=1.5, label=r"noise $N(0, (1/(4 r_{max}))^2)$")
    ax.fill_between(grid, density / density.max(), color="crimson", alpha=0.15)
    nodes = np.linspace(0, 1, r_max + 1)
    ax.scatter(
        nodes, np.zeros_like(nodes), color="tab:green", zorder=3, s=30, label=f"finest level's nodes (r_max = {r_max})"
    )
    ax.axvline(key, color="black", lw=1, ls="--", label="a key code")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.08, 1.25)
    ax.set_yticks([])
    ax.set_xlabel("key code value", fontsize=8)
    ax.set_title("relaxed precision: training noise of a\nquarter of the finest cell on each key code", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(labelsize=7)


def main(argv: list[str] | None = None) -> Path:
    """Draw the figure and save it at ``--output``; returns the path."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "docs" / "images" / "concepts.png"), help="the PNG to write")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    figure = plt.figure(figsize=(13, 4.2))
    spec = figure.add_gridspec(1, 4, width_ratios=[1, 1, 1.5, 1.6], wspace=0.3)
    key_code_panel(figure.add_subplot(spec[0]), figure.add_subplot(spec[1]), rng)
    retrieval_panel(figure.add_subplot(spec[2]))
    relaxed_precision_panel(figure.add_subplot(spec[3]))
    figure.text(0.13, -0.04, "(a) key codes, tiled", fontsize=10)
    figure.text(0.47, -0.04, "(b) feature grids", fontsize=10)
    figure.text(0.77, -0.04, "(c) relaxed precision", fontsize=10)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return output


if __name__ == "__main__":
    print(main())
