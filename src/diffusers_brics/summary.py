"""Model summary: parameters per component and decode multiply-accumulates, against the paper's Table 3.

    python -m diffusers_brics.summary paper-64x64x4
    python -m diffusers_brics.summary --all
    python -m diffusers_brics.summary --config path/to/autoencoder   # a saved BRICSAutoencoder folder
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.autoencoder_brics import PRESETS, BRICSAutoencoder

# Paper Table 3: grid parameters, decoder parameters, decode "GFlops" (multiply-accumulates, retrieval +
# decoder) at 256x256.
TABLE3 = {
    "paper-64x64x4": (18.6e6, 9.9e6, 63.41),
    "paper-32x32x4": (11.4e6, 9.9e6, 63.40),
    "paper-16x16x8": (21.2e6, 9.9e6, 63.54),
    "paper-16x16x16": (42.9e6, 9.9e6, 63.80),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: BRICSAutoencoder) -> dict[str, int]:
    """Parameters per component; ``decoder_path`` is everything after the grids (MLPs + decoder)."""
    grids = sum(grid.embeddings.numel() for grid in model.retrieval.grids)
    counts = {
        "encoder": _count(model.encoder),
        "grids": grids,
        "retrieval_mlps": _count(model.retrieval.mlps),
        "mapping": _count(model.decoder.mapping),
        "synthesis": _count(model.decoder) - _count(model.decoder.mapping),
    }
    counts["decoder_path"] = counts["retrieval_mlps"] + counts["mapping"] + counts["synthesis"]
    counts["total"] = _count(model)
    return counts


@torch.no_grad()
def decode_macs(model: BRICSAutoencoder, batch_size: int = 1) -> dict[str, float]:
    """Multiply-accumulates of one decode, split into retrieval and decoder (``torch.utils.flop_counter``)."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    z = torch.rand(batch_size, *model.latent_shape, device=param.device, dtype=param.dtype)
    with FlopCounterMode(display=False) as counter:
        f = model.retrieval(z)
    retrieval = counter.get_total_flops() / 2
    with FlopCounterMode(display=False) as counter:
        model.decoder(f)
    decoder = counter.get_total_flops() / 2
    model.train(was_training)
    return {"retrieval": retrieval, "decoder": decoder, "total": retrieval + decoder}


def _deviation(value: float, reference: float) -> str:
    return f"{(value / reference - 1) * 100:+.1f}%"


def summarize(model: BRICSAutoencoder, name: str | None = None) -> str:
    """A printable summary of ``model``; with a paper preset ``name``, compared with Table 3."""
    c = model.config
    counts = parameter_counts(model)
    macs = decode_macs(model)
    lines = [
        f"BRICSAutoencoder {name or ''}".rstrip(),
        f"  image {c.in_channels}x{c.sample_size}x{c.sample_size} -> key codes "
        f"{c.latent_size}x{c.latent_size}x{model.latent_channels} (N_h={c.num_groups}, C_key={c.key_channels})"
        f" -> feature block {c.feature_size}x{c.feature_size}x{c.feature_channels}",
        f"  grids: N_r={c.grid_num_levels} levels x C_v={c.grid_features_per_level}, T=2^{c.grid_log2_hashmap_size}, "
        f"r={c.grid_min_resolution:g}..{c.grid_max_resolution:g}, "
        f"{model.retrieval.grids[0].num_dense_levels} dense + "
        f"{c.grid_num_levels - model.retrieval.grids[0].num_dense_levels} hashed levels per group",
        "",
        "  parameters",
        f"    encoder                      {counts['encoder']:>14,}",
        f"    feature grids (all groups)   {counts['grids']:>14,}",
        f"    retrieval MLPs               {counts['retrieval_mlps']:>14,}",
        f"    decoder mapping network      {counts['mapping']:>14,}",
        f"    decoder synthesis network    {counts['synthesis']:>14,}",
        f"    decoder path (MLPs+decoder)  {counts['decoder_path']:>14,}",
        f"    total                        {counts['total']:>14,}",
        "",
        f"  decode GMACs at {c.sample_size}x{c.sample_size}, batch 1",
        f"    feature retrieval            {macs['retrieval'] / 1e9:>14.3f}",
        f"    decoder                      {macs['decoder'] / 1e9:>14.3f}",
        f"    total                        {macs['total'] / 1e9:>14.3f}",
    ]
    if name in TABLE3:
        grids, decoder, gmacs = TABLE3[name]
        lines += [
            "",
            "  paper Table 3                  paper      here   deviation",
            f"    grid parameters            {grids / 1e6:>7.1f}M {counts['grids'] / 1e6:>8.2f}M   "
            f"{_deviation(counts['grids'], grids)}",
            f"    decoder parameters         {decoder / 1e6:>7.1f}M {counts['decoder_path'] / 1e6:>8.2f}M   "
            f"{_deviation(counts['decoder_path'], decoder)}",
            f"    decode GMACs               {gmacs:>8.2f} {macs['total'] / 1e9:>9.2f}   "
            f"{_deviation(macs['total'] / 1e9, gmacs)}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", default="paper-64x64x4", choices=sorted(PRESETS))
    parser.add_argument("--all", action="store_true", help="summarise every preset")
    parser.add_argument("--config", help="a saved BRICSAutoencoder folder (or its config.json) instead of a preset")
    args = parser.parse_args(argv)
    if args.config:
        config = BRICSAutoencoder.load_config(args.config)
        print(summarize(BRICSAutoencoder.from_config(config), args.config))
        return 0
    for name in sorted(PRESETS) if args.all else [args.preset]:
        print(summarize(BRICSAutoencoder.from_preset(name, grid_backend="torch"), name))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
