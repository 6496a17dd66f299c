"""Our paper presets against the authors' release, built from its sources on the CPU with the same weights.

    git clone https://github.com/brics-project/brics_code_release /tmp/brics_code_release
    pip install einops
    python benchmarks/compare_release.py --release /tmp/brics_code_release [--preset paper-64x64x4 ...]

For each preset the release's ``HashAutoGenerator`` is built with its README's training command (``--table_num=16
--level_dim=4 --init_res=64 --init_dim=512 --style_dim=512 --mini_linear_n_layers=3 --num_downsamples=2
--additional_decoder_conv=true --attn_resolutions 64 --grid_type=tile``, with the code size's own
``--feat_coord_dim``, ``--num_downsamples``, ``--attn_resolutions`` and ``--res_min``), its weights are copied into
our `BRICSAutoencoder` (every tensor is matched by name, none is left out), and the two are compared: parameter
counts per component, decode multiply-accumulates (``torch.utils.flop_counter``) and outputs on random images
(key codes, decoded images, reconstructions) with the relaxed-precision noise off and the decoder's fixed noise
inputs. Nothing of the release is copied here: its modules are imported from the checkout given.

The release's grid look-up is a CUDA extension that does not build on a CPU; its ``grid_encode`` is replaced by
our look-up of the release's own table (``tests/test_feature_grid.py`` checks our look-up against a loop over the
kernel's indexing rules). Its Python modules need ``einops`` and ``pkg_resources``' ``parse_version`` (stood in
for here by ``packaging``'s).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.models.autoencoder_presets import PRESETS
from diffusers_brics.models.grid_interpolation import InterpolateTable
from diffusers_brics.summary import decode_macs, parameter_counts


def import_release(path: Path):
    """The release's generator class and its StyleGAN2 module, imported from a checkout at ``path``."""
    if not (path / "training" / "hash_autoencoder_generator.py").is_file():
        raise FileNotFoundError(f"--release {path}: not a checkout of brics-project/brics_code_release")
    from packaging.version import parse

    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(parse_version=parse))
    sys.modules["_gridencoder"] = types.ModuleType("_gridencoder")  # the CUDA extension, never called here
    sys.path.insert(0, str(path))
    import gridencoder.grid as release_grid
    import training.networks_stylegan2 as stylegan2
    from training.hash_autoencoder_generator import HashAutoGenerator

    return HashAutoGenerator, release_grid, stylegan2


def release_generator(HashAutoGenerator, preset: dict):
    """The release's generator for one of our paper presets (its README's command for that code size)."""
    downsamples = len(preset["encoder_block_out_channels"]) - 1
    return HashAutoGenerator(
        table_num=preset["grid_num_levels"], table_size_log2=preset["grid_log2_hashmap_size"], z_dim=256,
        res_min=preset["grid_min_resolution"], res_max=preset["sample_size"],
        level_dim=preset["grid_features_per_level"],
        feat_coord_dim=preset["num_groups"], init_res=preset["feature_size"], init_dim=preset["feature_channels"],
        style_dim=preset["style_dim"], tile_coord=True, mini_linear_n_layers=3, feat_coord_dim_per_table=1,
        num_downsamples=downsamples, additional_decoder_conv=True, use_kl_reg=False, noise_perturb=False,
        attn_resolutions=[preset["latent_size"]], grid_type="tiled", unfold_k=1, encoder_resnet_num=2,
    ).eval()


def our_name(name: str, num_blocks: int) -> str:
    """Our state-dict name for a tensor of the release's generator."""
    rules = [
        (r"^img_encoder\.down\.(\d+)\.block\.(\d+)\.nin_shortcut",
         r"encoder.encoder.levels.\1.resnets.\2.conv_shortcut"),
        (r"^img_encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.encoder.levels.\1.resnets.\2."),
        (r"^img_encoder\.down\.(\d+)\.attn\.(\d+)\.norm", r"encoder.encoder.levels.\1.attentions.\2.group_norm"),
        (r"^img_encoder\.down\.(\d+)\.attn\.(\d+)\.([qkv])\.", r"encoder.encoder.levels.\1.attentions.\2.to_\3."),
        (r"^img_encoder\.down\.(\d+)\.attn\.(\d+)\.proj_out", r"encoder.encoder.levels.\1.attentions.\2.to_out.0"),
        (r"^img_encoder\.down\.(\d+)\.downsample", r"encoder.encoder.levels.\1.downsample"),
        (r"^img_encoder\.(norm_out|conv_out|conv_in)", r"encoder.encoder.\1"),
        (r"^hash_encoder_list\.(\d+)\.embeddings", r"retrieval.grids.\1.embeddings"),
        (r"^hash_encoder_list\.(\d+)\.mini_linear\.module_list\.(\d+)\.s_mapping",
         r"retrieval.mlps.\1.layers.\2.affine"),
        (r"^hash_encoder_list\.(\d+)\.mini_linear\.module_list\.(\d+)\.", r"retrieval.mlps.\1.layers.\2."),
    ]
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    # mapping networks: Sequential(linear, identity, linear, identity, ...) -> our layers 0, 1, 2
    name = re.sub(r"^hash_encoder_list\.(\d+)\.mini_linear3\.main_path\.(\d+)",
                  lambda m: f"retrieval.modulation_mappings.{m[1]}.layers.{int(m[2]) // 2}", name)
    name = re.sub(r"^hash_encoder_list\.(\d+)\.mini_linear2\.main_path\.(\d+)",
                  lambda m: f"retrieval.style_mappings.{m[1]}.layers.{int(m[2]) // 2}", name)
    # synthesis blocks b64, b128, b256 -> our blocks 0, 1, 2; conv0 (up), conv1, conv_ex -> convs 0, 1, 2
    match = re.match(r"^synthesis_network\.b(\d+)\.(conv0|conv1|conv_ex|torgb)\.(.*)$", name)
    if match:
        resolutions = [64 * 2**i for i in range(num_blocks)]
        block, layer, rest = resolutions.index(int(match[1])), match[2], match[3]
        if layer == "torgb":
            return f"decoder.blocks.{block}.to_rgb.conv.{rest}"
        order = ["conv1", "conv_ex"] if block == 0 else ["conv0", "conv1", "conv_ex"]
        return f"decoder.blocks.{block}.convs.{order.index(layer)}.{rest}"
    return name


def copy_weights(release, ours: BRICSAutoencoder) -> int:
    """Copy every tensor of the release's generator into ``ours``; returns how many. Raises if a tensor of ours
    is left out or a tensor of the release has no counterpart (its unused encoder mid block and its fixed FIR
    filters excepted)."""
    state = ours.state_dict()
    copied = set()
    num_blocks = len(ours.decoder.blocks)
    for name, tensor in release.state_dict().items():
        if name.startswith("img_encoder.mid.") or name.endswith("resample_filter") or name.endswith(".offsets"):
            continue
        target = our_name(name, num_blocks)
        if target not in state:
            raise KeyError(f"release tensor {name} has no counterpart (looked for {target})")
        state[target] = tensor.reshape(state[target].shape).clone()
        copied.add(target)
    aliases = {n for n in state if ".downsample.Conv2d_0." in n}  # diffusers' alias of downsample.conv
    missing = sorted(set(state) - copied - aliases)
    if missing:
        raise KeyError(f"tensors of ours not set from the release: {missing[:5]}")
    ours.load_state_dict(state)
    return len(copied)


def compare(preset_name: str, HashAutoGenerator, release_grid, stylegan2) -> dict:
    torch.manual_seed(0)
    preset = {**PRESETS[preset_name], "grid_backend": "torch"}
    release = release_generator(HashAutoGenerator, preset)
    ours = BRICSAutoencoder(**preset).eval()
    with torch.no_grad():  # make every part of the path matter: noise strengths and grid entries away from 0
        for parameter in release.parameters():
            if parameter.ndim == 0:
                parameter.uniform_(-0.3, 0.3)
        for encoder in release.hash_encoder_list:
            encoder.embeddings.normal_(0, 0.3)
    copied = copy_weights(release, ours)

    def grid_encode(inputs, embeddings, offsets, per_level_scale, base_resolution, calc_grad, gridtype, align):
        frac, index = ours.retrieval.grids[0].lattice(inputs)
        return InterpolateTable.apply(frac, index, embeddings).reshape(inputs.shape[0], -1)

    release_grid.grid_encode = grid_encode
    defaults = list(stylegan2.SynthesisLayer.forward.__defaults__)
    defaults[0] = "const"  # the release draws fresh decoder noise by default; compare with the fixed noise inputs
    stylegan2.SynthesisLayer.forward.__defaults__ = tuple(defaults)

    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    release_decoder_path = count(release.synthesis_network) + sum(
        count(m) for e in release.hash_encoder_list for m in (e.mini_linear, e.mini_linear2, e.mini_linear3))
    z = torch.rand(1, *ours.latent_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        release.synthesis(None, None, None, key_codes=z)
    release_gmacs = counter.get_total_flops() / 2e9
    counts, macs = parameter_counts(ours), decode_macs(ours)

    images = torch.rand(2, 3, preset["sample_size"], preset["sample_size"]) * 2 - 1
    deterministic = dict(relaxed_precision=False, noise_mode="const")
    with torch.no_grad():
        codes_release, codes_ours = release.img_encoder(images), ours.encode(images).latents
        decoded_release = release.synthesis(None, None, None, key_codes=codes_release)
        decoded_ours = ours.decode(codes_release, **deterministic).sample
        recon_release = release.synthesis(None, None, images)
        recon_ours = ours(images, **deterministic).sample
    return {
        "preset": preset_name,
        "tensors_copied": copied,
        "parameters": {
            "release_all": count(release),
            "release_encoder_unused_mid_block": sum(p.numel() for n, p in release.img_encoder.named_parameters()
                                                    if n.startswith("mid.")),
            "release_decoder_path": release_decoder_path,
            "ours_all": counts["total"],
            "ours_decoder_path": counts["decoder_path"],
            "ours_encoder": counts["encoder"],
            "ours_grids": counts["grids"],
        },
        "decode_gmacs": {"release": release_gmacs, "ours": macs["total"] / 1e9},
        "max_abs_difference": {
            "key_codes": float((codes_release - codes_ours).abs().max()),
            "decoded": float((decoded_release - decoded_ours).abs().max()),
            "reconstruction": float((recon_release - recon_ours).abs().max()),
        },
        "decoded_std": float(decoded_release.std()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True, type=Path, help="a checkout of brics-project/brics_code_release")
    parser.add_argument("--preset", nargs="+", default=["paper-64x64x4"],
                        choices=[name for name in PRESETS if name.startswith("paper-")])
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    modules = import_release(args.release.resolve())
    results = [compare(name, *modules) for name in args.preset]
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
