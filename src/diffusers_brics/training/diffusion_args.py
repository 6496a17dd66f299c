"""Stage 2: train a UNet2DModel to generate BRICS key codes (latent diffusion on key codes).

The latents of diffusers' `AutoencoderKL` and `VQModel` (pre-quantisation) work as well, for comparisons on the same
budget: they are scaled by a ``scaling_factor`` fitted to the training set (``1 / std``, as Stable Diffusion's
was; saved in the pipeline's VAE config), or by ``--scaling_factor``. BRICS key codes are fitted the same way by the
``short`` recipe (``--scaling_factor fit``); the ``release`` recipe keeps the autoencoder's own map onto ``[-1, 1]``. So do the images themselves
(``--autoencoder none``): pixel-space diffusion on ``--resolution`` images in ``[-1, 1]`` (no scaling), saved as a
stock diffusers `DDPMPipeline`, so that latent and pixel diffusion are compared with one training infrastructure
(the same loop, schedule, EMA, checkpoints and cache: the centre-cropped images are cached as the "codes").

The dataset is encoded once by the trained autoencoder (relaxed-precision noise off) and the key codes are cached as
a `datasets` dataset on disk (``OUTPUT_DIR/key_codes``, reused by later runs; ``--encode_on_the_fly`` encodes every
batch instead). Codes are mapped to diffusion space by the autoencoder's ``(z - shift_factor) * scaling_factor``,
by default ``(z - 0.5) * 2`` onto ``[-1, 1]``. Epsilon prediction with the Chen 2023 cosine-variant schedule
(default, paper config b) or the cosine schedule with min-SNR-gamma weighting (config a). ``--class_column`` trains a
class-conditional UNet (class names are saved with the pipeline: ``pipe(class_labels=["name"])``);
``--caption_column`` a text-conditional `UNet2DConditionModel` on the hidden states of a `transformers` text encoder
(``--text_encoder_name_or_path``, frozen, or trained with ``--train_text_encoder``; without one, a small
`CLIPTextModel` built from a config with a tokenizer trained on the captions), saved as a
`BRICSTextToImagePipeline`. ``--conditioning_dropout_prob`` trains either for classifier-free guidance
(`training.conditioning`). The full `BRICSPipeline` is saved to ``OUTPUT_DIR`` at the end. `main` is the command line
(``examples/train_brics_diffusion.py``); `DiffusionStage` the training task the `Trainer` runs; `LatentSpace` what
its UNet models.
"""

from __future__ import annotations

import argparse

from ..console import SHORT_USAGE, HelpFormatter
from .config import DiffusionTrainingConfig, from_namespace, is_pixel_space
from .flags import (
    add_loop_arguments,
    apply_recipe,
    check_loop_arguments,
    defer_to_recipe,
    non_negative_float,
    positive_float,
    positive_int,
    read_field_defaults,
    unit_interval,
)
from ..names import UNET_PRESETS

#: Stage-2 training recipes, chosen by ``--training_recipe`` (default ``auto``: ``release`` for the ``paper`` UNet,
#: ``short`` for the smaller ones); a flag given on the command line overrides its recipe's value.
#: ``release``: the authors' release as far as these flags go (imagen-pytorch 1.25.2's trainer: Adam betas
#: (0.9, 0.99) at 8e-5, no warm-up, no gradient clipping; ema-pytorch's EMA of 0.9999 with power 2/3, touched every
#: 10 steps after step 100), epsilon prediction. The release's rate is a cosine annealing over 1e6 steps (97.5% of
#: 8e-5 at step 100k); ours is constant.
#: ``short``: ours for runs of a few thousand steps, chosen by measured KID per second
#: (``benchmarks/time_to_quality.py``, docs/training.md "Recipes"): a ten times higher rate with a short warm-up and a cosine
#: decay over the run, the UNet predicting the clean key codes with min-SNR-5 weighting (it reached a given KID in
#: fewer steps than epsilon or v prediction), batches of 32 (better per image than 64 and twice as fast per step),
#: diffusers' EMA warm-up, and key codes scaled to unit variance (``--scaling_factor fit``: the emoji's key codes
#: have std 0.35 on ``[-1, 1]``; unit variance lowered KID x1e3 at 1,000 steps from 154.5 to 146.5).
TRAINING_RECIPES: dict[str, dict] = {
    "release": dict(learning_rate=8e-5, optimizer="adam", adam_beta2=0.99, lr_warmup_steps=0, lr_scheduler="constant",
                    max_grad_norm=None, ema_schedule="ema-pytorch", ema_max_decay=0.9999, ema_power=2 / 3),
    "short": dict(train_batch_size=32, learning_rate=8e-4, lr_warmup_steps=100, lr_scheduler="cosine",
                  prediction_type="sample", snr_gamma=5.0, scaling_factor="fit"),
}


def scaling_factor(text: str) -> float | str:
    """argparse type of ``--scaling_factor``: ``"fit"`` or a finite number > 0."""
    if text == "fit":
        return text
    try:
        return positive_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'fit' or a number > 0, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The stage-2 command line; every flag is a field of `DiffusionTrainingConfig`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, usage=SHORT_USAGE)
    p.add_argument("--autoencoder", required=True,
                   help="a trained BRICSAutoencoder (or AutoencoderKL / VQModel): local folder or Hub id; a stage-1 "
                   "output folder is read from its autoencoder/ subfolder. 'none' (or 'pixels'): no autoencoder, "
                   "diffusion on the images themselves, saved as a diffusers DDPMPipeline")
    p.add_argument("--autoencoder_subfolder", help="e.g. 'vae' for a pipeline repo")
    p.add_argument("--scaling_factor", type=scaling_factor,
                   help="latents -> diffusion space scale: a number, or 'fit' for 1 / std of the training set's "
                   "latents (unit variance). Unset: a BRICS autoencoder's own map onto [-1, 1], fitted for "
                   "AutoencoderKL / VQModel latents. Not with --autoencoder none")
    p.add_argument("--resolution", type=positive_int,
                   help="with --autoencoder none: the image size (default 32); an autoencoder's images are its own "
                   "sample_size")
    groups = add_loop_arguments(p)
    data, train, val = groups["data"], groups["training"], groups["validation"]
    data.add_argument("--center_crop", action="store_true", help="with --encode_on_the_fly (cached codes always are)")
    data.add_argument("--random_flip", action="store_true", help="also cache the key codes of flipped images")
    data.add_argument("--encode_on_the_fly", action="store_true", help="encode every batch instead of caching")
    data.add_argument("--encode_batch_size", type=positive_int, help="images per encoding batch")
    data.add_argument("--class_column",
                      help="train a class-conditional UNet on this column (an imagefolder's 'label'; 'category' of the "
                      "embedded emoji)")
    cond = p.add_argument_group("conditioning")
    cond.add_argument("--caption_column",
                      help="train a text-to-image UNet on this column's captions (one string per image; the embedded "
                      "emoji's 'caption' is 'short name, [skin tone,] category'), saved as a BRICSTextToImagePipeline")
    cond.add_argument("--text_encoder_name_or_path",
                      help="the transformers text encoder and tokenizer (folder or Hub id; a pipeline's text_encoder/ "
                      "and tokenizer/ or a model repo: CLIP, T5, ...). Default: a CLIPTextModel of "
                      "--text_encoder_preset built from a config, with a BPE tokenizer trained on the captions")
    cond.add_argument("--text_encoder_preset", choices=["tiny", "small"],
                      help="the size of the text encoder built when no --text_encoder_name_or_path is given")
    cond.add_argument("--train_text_encoder", action="store_true",
                      help="train the text encoder with the UNet (default: frozen, its hidden states computed once)")
    cond.add_argument("--conditioning_dropout_prob", type=unit_interval,
                      help="probability of replacing an example's condition by the null one (the empty caption; a "
                      "learned null class) for classifier-free guidance (default: 0.1 with --caption_column, else 0)")
    cond.add_argument("--validation_guidance_scale", type=non_negative_float,
                      help="guidance of the validation samples (default: 3 when trained with conditioning dropout, "
                      "else 1)")
    model = p.add_argument_group("model")
    model.add_argument("--unet_preset", choices=UNET_PRESETS, help="the UNet's size")
    model.add_argument("--gradient_checkpointing", action="store_true",
                       help="recompute the UNet's blocks in the backward pass instead of keeping their activations "
                       "(less memory, about a third more compute)")
    model.add_argument("--training_recipe", choices=["auto", *TRAINING_RECIPES],
                       help="the defaults of the flags marked 'per --training_recipe': release (the authors'), short "
                       "(ours for runs of a few thousand steps), auto (release for --unet_preset paper, else short)")
    model.add_argument("--schedule", choices=["cosine-variant", "cosine"],
                       help="noise schedule: Chen 2023's cosine variant (paper config b) or cosine (config a)")
    model.add_argument("--prediction_type", choices=["epsilon", "v_prediction", "sample"],
                       help="what the UNet predicts: the noise (the paper), v (Salimans and Ho 2022) or the clean "
                       "key codes; saved in the scheduler's config, which every diffusers sampler reads")
    model.add_argument("--snr_gamma", type=non_negative_float,
                       help="min-SNR loss weighting, 0 for none (default: 5 with --schedule cosine, paper config a; "
                       "none with cosine-variant, config b)")
    model.add_argument("--num_train_timesteps", type=positive_int, help="diffusion steps")
    train.add_argument("--learning_rate", type=positive_float,
                       help="the release's command: 8e-5 (the paper's table: 8e-4)")
    train.add_argument("--optimizer", choices=["adamw", "adam"],
                       help="torch.optim.AdamW or Adam (the release's, imagen-pytorch's); with --adam_weight_decay 0 "
                       "the two take the same steps, bit for bit")
    train.add_argument("--adam_beta1", type=unit_interval, help="Adam(W) beta1")
    train.add_argument("--adam_beta2", type=unit_interval, help="Adam(W) beta2")
    train.add_argument("--adam_weight_decay", type=non_negative_float,
                       help="weight decay: AdamW's decoupled, Adam's added to the gradient (L2)")
    train.add_argument("--adam_epsilon", type=positive_float, help="Adam(W) eps")
    val.add_argument("--num_validation_images", type=positive_int, help="samples in the grid")
    val.add_argument("--num_inference_steps", type=positive_int, help="sampling steps for the grid")
    read_field_defaults(p, DiffusionTrainingConfig)
    defer_to_recipe(p, TRAINING_RECIPES)
    return p


def parse_args(argv: list[str] | None = None) -> DiffusionTrainingConfig:
    """`DiffusionTrainingConfig` from command-line arguments (``argv``, default ``sys.argv``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    scaling_given = hasattr(args, "scaling_factor")  # deferred to the recipe: absent unless given
    if args.training_recipe == "auto":
        args.training_recipe = "release" if args.unet_preset == "paper" else "short"
    apply_recipe(args, TRAINING_RECIPES[args.training_recipe])
    check_loop_arguments(parser, args)
    if is_pixel_space(args.autoencoder):
        why = f"--autoencoder {args.autoencoder} trains on the images themselves"
        if scaling_given:
            parser.error(f"--scaling_factor scales an autoencoder's latents; {why}, in [-1, 1] (scaling_factor 1)")
        args.scaling_factor = None
        for flag in ("class_column", "caption_column"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag}: diffusers' DDPMPipeline, which --autoencoder {args.autoencoder} saves, "
                             "takes no condition; train unconditionally, or on an autoencoder's latents")
        if args.autoencoder_subfolder is not None:
            parser.error(f"--autoencoder_subfolder names where an autoencoder is; {why}")
    if args.class_column is not None and args.caption_column is not None:
        parser.error("--class_column and --caption_column: condition on one of them")
    if args.caption_column is None:
        for flag in ("text_encoder_name_or_path", "train_text_encoder"):
            if getattr(args, flag):
                parser.error(f"--{flag} applies to text-to-image training: pass --caption_column")
    if args.conditioning_dropout_prob and args.class_column is None and args.caption_column is None:
        parser.error("--conditioning_dropout_prob drops a condition: pass --class_column or --caption_column")
    if args.validation_guidance_scale is not None and not args.conditioning_dropout_prob:
        parser.error("--validation_guidance_scale needs a model trained for guidance: pass "
                     "--conditioning_dropout_prob > 0")
    if args.conditioning_dropout_prob == 1:
        parser.error("--conditioning_dropout_prob 1 would never show the UNet a condition; use a value below 1")
    if args.num_inference_steps > args.num_train_timesteps:
        parser.error(f"--num_inference_steps {args.num_inference_steps} exceeds --num_train_timesteps "
                     f"{args.num_train_timesteps}")
    return from_namespace(DiffusionTrainingConfig, args)
