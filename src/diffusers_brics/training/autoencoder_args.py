"""Stage 1: train a BRICS autoencoder (encoder + feature grids + decoder) with a StyleGAN2 discriminator.

``--model_type autoencoderkl|vqmodel|cvqvae`` trains diffusers' `AutoencoderKL` or `VQModel` instead (``cvqvae``: a
`VQModel` with CVQ-VAE's online clustered codebook, ``--cvq_*``), with the same data,
losses, discriminator, EMA, checkpoints and validation, plus each model's own term: the KL divergence of its
posterior (LDM's weight 1e-6, summed over the latent), or VQ-VAE's codebook and commitment losses (diffusers'
`VectorQuantizer`, beta 0.25, weighted by ``--codebook_weight`` as taming-transformers does).

Loss (paper eq. 5, supp. A.3): ``20 * L2 + 5 * perceptual + GAN``: the release's VGG16 perceptual loss (or LPIPS-VGG),
the non-saturating loss with lazy R1 (or WGAN-GP), plus a KL term for the KL variant. Adam with betas (0, 0.99), eps
1e-15 for the autoencoder (the grids may get their own learning rate), 1e-8 for the discriminator (lr and betas
adjusted for lazy R1 as StyleGAN2 does), and StyleGAN2's EMA schedule. `main` is the command line
(``examples/train_brics_ae.py``); `AutoencoderStage` the training task the `Trainer` runs.
"""

from __future__ import annotations

import argparse

from ..console import SHORT_USAGE, HelpFormatter
from ..models.model_types import MODEL_TYPES, preset_config, presets_of
from .config import AutoencoderTrainingConfig, from_namespace
from .flags import (
    add_loop_arguments,
    apply_recipe,
    check_loop_arguments,
    defer_to_recipe,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    read_field_defaults,
    unit_interval,
)

#: Stage-1 training recipes, chosen by ``--training_recipe`` (default ``auto``: ``small`` for images of 64x64 and
#: less, else ``release``); a flag given on the command line overrides its recipe's value.
#: ``release``: the authors' release (the flags' own defaults): batch 16, Adam (0, 0.99) at 2e-3, the VGG perceptual
#: loss at 224x224 and the GAN with lazy R1 from the first step, StyleGAN2's EMA.
#: ``small``: ours for small images on few cores, chosen by measured quality per second
#: (``benchmarks/time_to_quality.py``, docs/training.md "Recipes"): L2 alone (the VGG loss resizes every image to 224x224 and the
#: GAN doubles a step), Adam with momentum (beta1 0.9 reached a given PSNR in a third of the steps of beta1 0), batches
#: of 16 (as good per image as 32 early on, so nearly twice as fast), the grids at 1e-2, and a cosine decay of the rate
#: over the run.
TRAINING_RECIPES: dict[str, dict] = {
    "release": {},
    "small": dict(train_batch_size=16, adam_beta1=0.9, grid_learning_rate=1e-2, lr_scheduler="cosine",
                  perceptual_weight=0.0, gan_weight=0.0),
}
SMALL_IMAGES = 64  # the largest image size (pixels) for which --training_recipe auto picks "small"


def build_parser() -> argparse.ArgumentParser:
    """The stage-1 command line; every flag is a field of `AutoencoderTrainingConfig`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, usage=SHORT_USAGE)
    groups = add_loop_arguments(p)
    data, train, val = groups["data"], groups["training"], groups["validation"]
    data.add_argument("--resolution", type=positive_int, help="default: the model's sample_size")
    data.add_argument("--center_crop", action="store_true", help="centre crop (default: random crop)")
    data.add_argument("--random_flip", action="store_true", help="mirror half the images, drawn per step")
    data.add_argument("--validation_fraction", type=float,
                      help="held out when the dataset has no validation/test split")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, help="DataLoader workers")
    model = p.add_argument_group("model")
    model.add_argument("--model_type", choices=sorted(MODEL_TYPES),
                       help="the autoencoder to train: BRICS, or diffusers' AutoencoderKL / VQModel, or cvqvae: a "
                       "VQModel with CVQ-VAE's online clustered codebook (saved as a stock VQModel)")
    kinds = sorted(MODEL_TYPES)
    presets = "; ".join(f"{kind}: {', '.join(presets_of(kind))}" for kind in kinds)
    model.add_argument("--preset", help=f"a preset of the model type ({presets})")
    model.add_argument("--training_recipe", choices=["auto", *TRAINING_RECIPES],
                       help=f"the defaults of the flags marked 'per --training_recipe': release (the authors'), small "
                       f"(ours for short runs on small images), auto (small up to {SMALL_IMAGES}x{SMALL_IMAGES} "
                       "images, else release)")
    model.add_argument("--model_config_name_or_path",
                       help="a config.json folder (or Hub id) of the model type, overriding --preset")
    model.add_argument("--gradient_checkpointing", action="store_true", help="trade compute for memory")
    model.add_argument("--kl_weight", type=non_negative_float,
                       help="BRICS: > 0 trains the KL variant (paper config c: KL-regularised key codes instead of the "
                       "relaxed-precision noise; paper weight 1e-6); default 0. AutoencoderKL: the KL term's weight, "
                       "default 1e-6 (LDM)")
    model.add_argument("--kl_reduction", choices=["mean", "sum"],
                       help="the KL term averaged over a code's elements (the BRICS release; default for BRICS) or "
                            "summed over them (diffusers' DiagonalGaussianDistribution.kl(), C*H*W times stronger; "
                            "LDM's, default for AutoencoderKL)")
    model.add_argument("--codebook_weight", type=non_negative_float,
                       help="VQModel: weight of the codebook + 0.25 x commitment loss (taming-transformers: 1)")
    add_cvq_arguments(model)
    train.add_argument("--learning_rate", type=positive_float, help="Adam's rate (paper: 2e-3)")
    train.add_argument("--grid_learning_rate", type=positive_float,
                       help="learning rate of the feature grids (default: --learning_rate)")
    train.add_argument("--disc_learning_rate", type=positive_float, help="default: --learning_rate")
    train.add_argument("--adam_beta1", type=unit_interval, help="Adam beta1 (paper: 0)")
    train.add_argument("--adam_beta2", type=unit_interval, help="Adam beta2 (paper: 0.99)")
    train.add_argument("--adam_epsilon", type=positive_float,
                       help="Adam eps of the autoencoder (paper: 1e-15, fast grid updates)")
    train.add_argument("--disc_adam_epsilon", type=positive_float, help="Adam eps of the discriminator")
    loss = p.add_argument_group("loss")
    loss.add_argument("--l2_weight", type=non_negative_float, help="weight of the L2 term (paper: 20)")
    loss.add_argument("--perceptual_weight", type=non_negative_float,
                      help="perceptual loss weight (0: off)")
    loss.add_argument("--perceptual_loss", choices=["vgg", "lpips"],
                      help="vgg: the release's L1 between VGG16 features (relu1_2 ... relu4_3, Johnson et al.); "
                           "lpips: LPIPS-VGG")
    loss.add_argument("--perceptual_resolution", type=non_negative_int,
                      help="images are resized to this size for the VGG loss (the release: 224; 0: their own size)")
    loss.add_argument("--lpips_weights", help="folder with prepared LPIPS weights, whose VGG16 backbone the VGG loss "
                      "also uses (else BRICS_LPIPS_WEIGHTS/cache)")
    loss.add_argument("--gan_weight", type=non_negative_float, help="0: no discriminator")
    loss.add_argument("--gan_loss", choices=["r1", "wgan-gp"],
                      help="r1: non-saturating + lazy R1 (the release); wgan-gp: the paper's text")
    loss.add_argument("--r1_gamma", type=non_negative_float, help="R1 weight gamma")
    loss.add_argument("--r1_interval", type=positive_int, help="R1 every N steps (lazy)")
    loss.add_argument("--r1_lazy_adjustment", action=argparse.BooleanOptionalAction,
                      help="StyleGAN2's lazy-regularisation adjustment of the discriminator's Adam: lr x c and betas "
                           "** c with c = interval / (interval + 1) (the release)")
    loss.add_argument("--gp_weight", type=non_negative_float, help="WGAN-GP gradient-penalty weight")
    loss.add_argument("--disc_start", type=non_negative_int, help="step at which the GAN loss starts")
    loss.add_argument("--disc_channel_base", type=positive_int,
                      help="channels at resolution r are min(base / r, max); default: 32768 (NVlabs) from 256x256 "
                           "up, 64 * resolution below")
    loss.add_argument("--disc_channel_max", type=positive_int,
                      help="default: 512 from 256x256 up, 256 below")
    loss.add_argument("--r1_separate_step", action=argparse.BooleanOptionalAction,
                      help="R1 as a discriminator step of its own after the main one, every --r1_interval steps (the "
                           "release: 17 discriminator steps per 16 batches at interval 16); default: in the main "
                           "step's loss (one discriminator step per batch)")
    loss.add_argument("--disc_recompute_reconstruction", action=argparse.BooleanOptionalAction,
                      help="the discriminator trains on the autoencoder's output after the autoencoder's update, a "
                           "second forward per step (the release); default: on the output the autoencoder's loss "
                           "used. Needs --gradient_accumulation_steps 1")
    loss.add_argument("--disc_num_fp16_res", type=non_negative_int,
                      help="the discriminator's blocks at the N highest resolutions compute in float16, on CUDA only "
                           "(elsewhere float32, with a warning; the release: 4); default 0: float32")
    loss.add_argument("--disc_conv_clamp", type=positive_float,
                      help="clamp the discriminator's convolution outputs to +-X, on any device (the release: 256); "
                           "default: no clamp")
    val.add_argument("--eval_batch_size", type=positive_int, help="held-out images per batch")
    val.add_argument("--num_validation_images", type=positive_int, help="images in the reconstruction grid")
    val.add_argument("--max_eval_images", type=positive_int, help="cap on held-out images for metrics")
    val.add_argument("--eval_with_noise", action=argparse.BooleanOptionalAction,
                     help="held-out metrics with the relaxed-precision noise and random decoder noise, as the "
                          "release's measure_recon_error.py (drawn from a fixed seed); --no-eval_with_noise: the "
                          "deterministic decode a pipeline uses")
    read_field_defaults(p, AutoencoderTrainingConfig)
    defer_to_recipe(p, TRAINING_RECIPES)
    return p


def cvq_decay(text: str) -> float:
    """argparse type: a decay in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def add_cvq_arguments(group) -> None:
    """The ``--cvq_*`` flags of ``--model_type cvqvae`` (their defaults are the fields of `AutoencoderTrainingConfig`)."""
    group.add_argument("--cvq_decay", type=cvq_decay,
                       help="cvqvae: decay of each codebook entry's running usage; an entry used less than about "
                            "(1 - decay) / (10 K) of the time moves to a feature of the batch (the reference: 0.99)")
    group.add_argument("--cvq_distance", choices=["cosine", "euclidean"],
                       help="cvqvae: distance of the lookup and the anchors; cosine keeps unit-length entries (the "
                            "reference: cosine)")
    group.add_argument("--cvq_anchor", choices=["probability", "closest", "random"],
                       help="cvqvae: the feature an entry moves to: drawn by softmax of its similarity, the closest, "
                            "or from a pool of recent features (the reference's quantiser: probability; its "
                            "training script: closest)")
    group.add_argument("--cvq_contrastive_weight", type=non_negative_float,
                       help="cvqvae: weight of the contrastive term (0: off, as the reference's training script)")


def image_size_of(args: argparse.Namespace) -> int | None:
    """The image size a stage-1 run trains on: ``--resolution``, else its model's ``sample_size`` (None where the
    model's config cannot be read; building the model reports why)."""
    if args.resolution:
        return args.resolution
    if args.model_config_name_or_path:
        try:
            from ..models.autoencoder_brics import BRICSAutoencoder  # imports torch: not for --help

            size = BRICSAutoencoder.load_config(args.model_config_name_or_path).get("sample_size")
        except (OSError, ValueError):
            return None
    else:
        size = preset_config(args.model_type, args.preset).get("sample_size")
    return size[0] if isinstance(size, (list, tuple)) else size


def parse_args(argv: list[str] | None = None) -> AutoencoderTrainingConfig:
    """`AutoencoderTrainingConfig` from command-line arguments (``argv``, default ``sys.argv``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset not in presets_of(args.model_type):
        parser.error(f"--preset {args.preset!r} is not a {args.model_type} preset; choose one of "
                     f"{', '.join(presets_of(args.model_type))}")
    if args.training_recipe == "auto":
        size = image_size_of(args)
        args.training_recipe = "small" if size is not None and size <= SMALL_IMAGES else "release"
    apply_recipe(args, TRAINING_RECIPES[args.training_recipe])
    check_loop_arguments(parser, args)
    if args.kl_weight and args.model_type in ("vqmodel", "cvqvae"):
        parser.error(f"--kl_weight applies to BRICS (its KL variant) and AutoencoderKL, not to --model_type "
                     f"{args.model_type}")
    if args.disc_recompute_reconstruction and args.gradient_accumulation_steps > 1:
        parser.error("--disc_recompute_reconstruction applies the autoencoder's update before the discriminator's "
                     "forward, within one batch: use --gradient_accumulation_steps 1 (or a larger batch)")
    if args.disc_recompute_reconstruction and args.model_type == "cvqvae":
        parser.error("--disc_recompute_reconstruction: a second forward of --model_type cvqvae would update its "
                     "codebook twice per step; leave it off")
    if args.torch_compile and args.gradient_checkpointing and args.torch_compile_fullgraph:
        parser.error("--torch_compile with --gradient_checkpointing: dynamo cannot trace the checkpointed blocks into "
                     "one graph; add --no-torch_compile_fullgraph (the blocks then run between compiled graphs)")
    return from_namespace(AutoencoderTrainingConfig, args)
