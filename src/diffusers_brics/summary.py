"""Model summary: parameters per component and decode multiply-accumulates, against the paper's Table 3 and
the authors' release. The command line is `brics info` (`summary_args`).
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models.autoencoder_brics import BRICSAutoencoder
from .models.autoencoder_presets import PRESETS
from .summary_args import build_parser

# Paper Table 3: grid parameters, decoder parameters, decode "GFlops" (multiply-accumulates, retrieval +
# decoder) at 256x256.
TABLE3 = {
    "paper-64x64x4": (18.6e6, 9.9e6, 63.41),
    "paper-32x32x4": (11.4e6, 9.9e6, 63.40),
    "paper-16x16x8": (21.2e6, 9.9e6, 63.54),
    "paper-16x16x16": (42.9e6, 9.9e6, 63.80),
}
# The authors' release (brics-project/brics_code_release, its README's training command for each code size), built
# from its sources on CPU by benchmarks/compare_release.py: grid parameters, decoder-path parameters (per-group
# MLPs and style networks + synthesis network, 282,112 + 9,445,521 at 64x64x4) and decode multiply-accumulates at
# 256x256 by torch.utils.flop_counter (its CUDA grid look-up is not counted, as ours is not).
RELEASE = {
    "paper-64x64x4": (18_630_272, 9_727_633, 68.17),
    "paper-32x32x4": (10_607_744, 9_727_633, 68.17),
    "paper-32x32x8": (21_215_488, 9_943_185, 68.30),
    "paper-16x16x8": (21_215_488, 9_943_185, 68.30),
    "paper-16x16x16": (42_430_976, 10_374_289, 68.57),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(model: BRICSAutoencoder) -> dict[str, int]:
    """Parameters per component; ``decoder_path`` is everything after the grids (MLPs, style networks, decoder).

    ``retrieval_mlps`` counts the per-group ``F_mlp`` with their modulation networks; ``mapping`` the networks
    giving the decoder's style (the groups' style networks, or the decoder's own mapping network).
    """
    retrieval, decoder = model.retrieval, model.decoder
    grids = sum(grid.embeddings.numel() for grid in retrieval.grids)
    mapping = _count(retrieval.style_mappings) if retrieval.style_mappings is not None else _count(decoder.mapping)
    counts = {
        "encoder": _count(model.encoder),
        "grids": grids,
        "retrieval_mlps": _count(retrieval.mlps) + (_count(retrieval.modulation_mappings)
                                                   if retrieval.modulation_mappings is not None else 0),
        "mapping": mapping,
        "synthesis": _count(decoder) - (_count(decoder.mapping) if decoder.mapping is not None else 0),
    }
    counts["decoder_path"] = counts["retrieval_mlps"] + counts["mapping"] + counts["synthesis"]
    counts["total"] = _count(model)
    return counts


@torch.no_grad()
def decode_macs(model: BRICSAutoencoder, batch_size: int = 1) -> dict[str, float]:
    """Multiply-accumulates of one decode, split into retrieval and decoder (``torch.utils.flop_counter``)."""
    param = next(model.parameters())
    z = torch.rand(batch_size, *model.latent_shape, device=param.device, dtype=param.dtype)
    with FlopCounterMode(display=False) as counter:
        f, style = model.retrieval(z, relaxed_precision=False)
    retrieval = counter.get_total_flops() / 2
    with FlopCounterMode(display=False) as counter:
        model.decoder(f, style, noise_mode="const")
    decoder = counter.get_total_flops() / 2
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
        f"{c.grid_num_levels - model.retrieval.grids[0].num_dense_levels} {c.grid_indexing} levels per group",
        "",
        "  parameters",
        f"    encoder                      {counts['encoder']:>14,}",
        f"    feature grids (all groups)   {counts['grids']:>14,}",
        f"    retrieval MLPs (F_mlp)       {counts['retrieval_mlps']:>14,}",
        f"    style networks               {counts['mapping']:>14,}",
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
        release = RELEASE.get(name)
        here = (counts["grids"], counts["decoder_path"], macs["total"] / 1e9)
        lines += ["", "  paper Table 3 / release       paper      release         here   vs paper  vs release"]
        for label, paper, ours, ref, unit in (
            ("grid parameters", grids, here[0], release and release[0], 1e6),
            ("decoder parameters", decoder, here[1], release and release[1], 1e6),
            ("decode GMACs", gmacs, here[2], release and release[2], 1.0),
        ):
            fmt = (lambda v: f"{v / unit:,.2f}M") if unit > 1 else (lambda v: f"{v:,.2f}")
            lines.append(f"    {label:<22} {fmt(paper):>10} {fmt(ref) if ref else '-':>12} {fmt(ours):>12}   "
                         f"{_deviation(ours, paper):>8}  {_deviation(ours, ref) if ref else '-':>10}")
    return "\n".join(lines)


def trained_autoencoder(name_or_path: str) -> BRICSAutoencoder:
    """The BRICS autoencoder of ``--model``: whatever the other commands load (a pipeline, an autoencoder or a
    training output; a local folder or a Hub repo id)."""
    from .pipelines.loading import load_model

    vae = load_model(name_or_path).require_vae()
    if not isinstance(vae, BRICSAutoencoder):
        raise ValueError(f"--model {name_or_path!r}: its autoencoder is a {type(vae).__name__}; `brics info` "
                         "describes BRICS autoencoders")
    return vae


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model:
        print(summarize(trained_autoencoder(args.model), args.model))
        return 0
    if args.config:
        config = BRICSAutoencoder.load_config(args.config)
        print(summarize(BRICSAutoencoder.from_config(config), args.config))
        return 0
    for name in sorted(PRESETS) if args.all else [args.preset]:
        print(summarize(BRICSAutoencoder.from_preset(name, grid_backend="torch"), name))
        print()
    return 0


if __name__ == "__main__":
    from .console import run_command

    sys.exit(run_command(main, prog="brics info"))
