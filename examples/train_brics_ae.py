"""Stage 1: train a BRICS autoencoder (encoder + feature grids + decoder, with a StyleGAN2 discriminator).

    accelerate launch examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji
    torchrun --nproc_per_node 2 examples/train_brics_ae.py --preset small-32 --output_dir brics-emoji

Loss (paper eq. 5, supp. A.3): ``20 * L2 + 5 * perceptual + GAN``: the release's VGG16 perceptual loss (or
``--perceptual_loss lpips``), the non-saturating loss with lazy R1 (or WGAN-GP with ``--gan_loss wgan-gp``), plus
``--kl_weight`` for the KL variant. Adam with betas (0, 0.99), eps 1e-15 for the autoencoder (the grids get
``--grid_learning_rate``), 1e-8 for the discriminator (lr and betas adjusted for lazy R1 as StyleGAN2 does), and
StyleGAN2's EMA schedule. Without data flags it trains on the emoji images shipped with the package.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast
from diffusers.optimization import SchedulerType
from diffusers.utils import make_image_grid

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.metrics import GridUsage, lpips, psnr, ssim
from diffusers_brics.models.autoencoder_brics import PRESETS
from diffusers_brics.training.checkpointing import save_checkpoint
from diffusers_brics.training.data import image_column_of, image_transform, load_image_datasets, undecoded
from diffusers_brics.training.discriminator import StyleGAN2Discriminator
from diffusers_brics.training.loop import (
    StepLogs,
    add_common_arguments,
    check_common_arguments,
    check_in_sync,
    ema_copy,
    log_image,
    make_accelerator,
    make_ema,
    micro_batch_seed,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_with_schedule,
    register_checkpoint_hooks,
    resume,
    run_training,
    step_progress,
    time_is_up,
    unit_interval,
)
from diffusers_brics.training.hub import push_to_hub, write_model_card
from diffusers_brics.training.images import to_pil
from diffusers_brics.training.losses import (
    VGGPerceptualLoss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    gradient_penalty,
    kl_loss,
    r1_penalty,
)

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = add_common_arguments(p, output_dir="brics-autoencoder", ema_max_decay=0.999)["data"]
    data.add_argument("--resolution", type=positive_int, help="default: the model's sample_size")
    data.add_argument("--center_crop", action="store_true", help="centre crop (default: random crop)")
    data.add_argument("--random_flip", action="store_true")
    data.add_argument("--validation_fraction", type=float, default=0.05,
                      help="held out when the dataset has no validation/test split")
    data.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    model = p.add_argument_group("model")
    model.add_argument("--preset", default="small-32", choices=sorted(PRESETS))
    model.add_argument("--model_config_name_or_path", help="a BRICSAutoencoder config (overrides --preset)")
    model.add_argument("--kl_weight", type=non_negative_float, default=0.0,
                       help="> 0 trains the KL variant (paper config c: KL-regularised key codes instead of the "
                       "relaxed-precision noise; paper weight 1e-6)")
    model.add_argument("--kl_reduction", choices=["mean", "sum"], default="mean",
                       help="the KL term averaged over a code's elements (the release) or summed over them "
                            "(diffusers' DiagonalGaussianDistribution.kl(), C*H*W times stronger)")
    train = p.add_argument_group("training")
    train.add_argument("--train_batch_size", type=positive_int, default=16)
    train.add_argument("--eval_batch_size", type=positive_int, default=64)
    train.add_argument("--num_epochs", type=positive_int, default=100)
    train.add_argument("--max_train_steps", type=positive_int, help="overrides --num_epochs")
    train.add_argument("--learning_rate", type=positive_float, default=2e-3)
    train.add_argument("--grid_learning_rate", type=positive_float, help="learning rate of the feature grids (default: --learning_rate)")
    train.add_argument("--disc_learning_rate", type=positive_float, help="default: --learning_rate")
    train.add_argument("--adam_beta1", type=unit_interval, default=0.0)
    train.add_argument("--adam_beta2", type=unit_interval, default=0.99)
    train.add_argument("--adam_epsilon", type=positive_float, default=1e-15)
    train.add_argument("--disc_adam_epsilon", type=positive_float, default=1e-8)
    train.add_argument("--lr_scheduler", default="constant", choices=[t.value for t in SchedulerType])
    train.add_argument("--lr_warmup_steps", type=non_negative_int, default=0)
    train.add_argument("--max_grad_norm", type=positive_float, default=None)
    train.add_argument("--gradient_checkpointing", action="store_true")
    loss = p.add_argument_group("loss")
    loss.add_argument("--l2_weight", type=non_negative_float, default=20.0)
    loss.add_argument("--perceptual_weight", type=non_negative_float, default=5.0,
                      help="perceptual loss weight (0: off)")
    loss.add_argument("--perceptual_loss", choices=["vgg", "lpips"], default="vgg",
                      help="vgg: the release's L1 between VGG16 features (relu1_2 ... relu4_3, Johnson et al.); "
                           "lpips: LPIPS-VGG")
    loss.add_argument("--perceptual_resolution", type=non_negative_int, default=224,
                      help="images are resized to this size for the VGG loss (the release: 224; 0: their own size)")
    loss.add_argument("--gan_weight", type=non_negative_float, default=1.0, help="0: no discriminator")
    loss.add_argument("--gan_loss", choices=["r1", "wgan-gp"], default="r1")
    loss.add_argument("--r1_gamma", type=non_negative_float, default=4.0)
    loss.add_argument("--r1_interval", type=positive_int, default=16)
    loss.add_argument("--r1_lazy_adjustment", action=argparse.BooleanOptionalAction, default=True,
                      help="StyleGAN2's lazy-regularisation adjustment of the discriminator's Adam: lr x c and betas "
                           "** c with c = interval / (interval + 1) (the release)")
    loss.add_argument("--gp_weight", type=non_negative_float, default=4.0)
    loss.add_argument("--disc_start", type=non_negative_int, default=0, help="step at which the GAN loss starts")
    loss.add_argument("--disc_channel_base", type=positive_int, default=None,
                      help="channels at resolution r are min(base / r, max); default: 32768 (NVlabs) from 256x256 "
                           "up, 64 * resolution below")
    loss.add_argument("--disc_channel_max", type=positive_int, default=None, help="default: 512 from 256x256 up, 256 below")
    loss.add_argument("--lpips_weights", help="folder with prepared LPIPS weights, whose VGG16 backbone the VGG loss "
                      "also uses (else BRICS_LPIPS_WEIGHTS/cache)")
    train.add_argument("--ema_schedule", choices=["stylegan", "warmup"], default="stylegan",
                       help="stylegan: half-life --ema_halflife_kimg with --ema_rampup (the release); warmup: "
                            "diffusers' EMAModel warm-up capped at --ema_max_decay")
    train.add_argument("--ema_halflife_kimg", type=positive_float, default=None,
                       help="EMA half-life in thousands of images (default: 10 * total batch / 32, the release's)")
    train.add_argument("--ema_rampup", type=non_negative_float, default=0.05,
                       help="EMA half-life ramp-up as a fraction of the images seen (0: none)")
    log = p.add_argument_group("validation")
    log.add_argument("--validation_steps", type=positive_int, default=500)
    log.add_argument("--eval_with_noise", action=argparse.BooleanOptionalAction, default=True,
                     help="held-out metrics with the relaxed-precision noise and random decoder noise, as the "
                          "release's measure_recon_error.py (drawn from a fixed seed); --no-eval_with_noise: the "
                          "deterministic decode a pipeline uses")
    log.add_argument("--num_validation_images", type=positive_int, default=16)
    log.add_argument("--max_eval_images", type=positive_int, default=None, help="cap on held-out images for metrics")
    args = p.parse_args(argv)
    check_common_arguments(p, args)
    return args


def build_model(args) -> BRICSAutoencoder:
    path = args.model_config_name_or_path
    if not path:
        return BRICSAutoencoder.from_preset(args.preset)
    try:
        config = BRICSAutoencoder.load_config(path)
    except OSError as error:  # diffusers reports a missing folder as a failed Hub download
        nested = os.path.join(path, "autoencoder", "config.json")
        hint = f"; a stage-1 output folder keeps it in {os.path.dirname(nested)!r}" if os.path.isfile(nested) else ""
        raise FileNotFoundError(f"--model_config_name_or_path {path!r}: no config.json, neither in a local folder nor "
                                f"in a Hub repo{hint} ({error})") from error
    return BRICSAutoencoder.from_config(config)


def collate(transform, column):
    def fn(examples):
        return torch.stack([transform(example[column]) for example in examples])

    return fn


@torch.no_grad()
def evaluate(model, loader, fixed_images, max_images=None, with_noise=True, seed=0) -> tuple[dict[str, float], object]:
    """Held-out PSNR / SSIM / LPIPS-alex, grid usage, and a grid of originals over reconstructions.

    ``with_noise``: reconstructions with the relaxed-precision noise (for a model trained with it) and random
    decoder noise (the release's measurement), drawn from ``seed``; otherwise the deterministic decode."""
    totals, count, usage = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}, 0, GridUsage(model)
    generator = torch.Generator().manual_seed(seed)
    noise = dict(relaxed_precision=with_noise and model.config.relaxed_precision,
                 noise_mode="random" if with_noise else "const", generator=generator)
    for images in loader:
        images = images.to(model.device)
        z = model.encode(images, sample_posterior=False).latents
        recon = model.decode(z, **noise).sample.clamp(-1, 1)
        usage.update(z)
        for name, fn in (("psnr", psnr), ("ssim", ssim)):
            totals[name] += float(fn(recon, images).sum())
        totals["lpips"] += float(lpips(recon, images, net="alex").sum())
        count += images.shape[0]
        if max_images and count >= max_images:
            break
    metrics = {name: value / count for name, value in totals.items()}
    hits = usage.hit_fraction()  # (N_h, N_r)
    metrics["grid_usage_mean"] = float(hits.mean())
    metrics["grid_usage_min_level"] = float(hits.min())
    metrics["grid_usage_all_nodes_mean"] = float(usage.hit_fraction(reachable_only=False).mean())
    metrics.update({f"grid_usage_level_{level}": float(v) for level, v in enumerate(hits.mean(dim=0))})
    metrics["grid_trained_mean"] = float(GridUsage.trained_entries(model).hit_fraction().mean())
    fixed = fixed_images.to(model.device)
    recon = model.decode(model.encode(fixed, sample_posterior=False).latents, **noise).sample.clamp(-1, 1)
    pictures = [to_pil(x) for x in torch.cat([fixed, recon])]
    return metrics, make_image_grid(pictures, rows=2, cols=fixed.shape[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_training(train, args, make_accelerator(args, "train_brics_ae"))


def train(args: argparse.Namespace, accelerator: Accelerator) -> None:
    """The whole run on every process; the main process also saves, evaluates and publishes the result."""

    model = build_model(args)
    resolution = args.resolution or model.config.sample_size
    if resolution != model.config.sample_size:
        raise ValueError(f"--resolution {resolution} does not match the model's sample_size {model.config.sample_size}")
    if args.kl_weight > 0 and (not model.config.kl_key_codes or model.config.relaxed_precision):
        # Paper config c: KL-regularised key codes take the place of the relaxed-precision noise (config d).
        # Keywords, not a merged dict: keys listed in the config's `_use_default_values` would be reset to defaults.
        model = BRICSAutoencoder.from_config(model.config, kl_key_codes=True, relaxed_precision=False)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    use_gan = args.gan_weight > 0
    large = resolution >= 256
    discriminator = StyleGAN2Discriminator(
        resolution=resolution,
        channel_base=args.disc_channel_base or (32768 if large else 64 * resolution),
        channel_max=args.disc_channel_max or (512 if large else 256),
    ) if use_gan else None

    with accelerator.main_process_first():
        train_set, val_set = load_image_datasets(
            args.dataset_name, args.dataset_config_name, args.train_data_dir, resolution, args.cache_dir,
            args.validation_fraction, args.seed,
        )
    column = image_column_of(train_set, args.image_column)
    train_set, val_set = undecoded(train_set, column), undecoded(val_set, column)
    if len(train_set) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"the training set has {len(train_set)} images, fewer than one batch of --train_batch_size "
            f"{args.train_batch_size} per process on {accelerator.num_processes} process(es)"
        )
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
        collate_fn=collate(image_transform(resolution, args.center_crop), column),
        num_workers=args.dataloader_num_workers,
    )
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=args.eval_batch_size, collate_fn=collate(image_transform(resolution, True), column)
    )
    fixed_images = torch.stack([image_transform(resolution, True)(val_set[i][column])
                                for i in range(min(args.num_validation_images, len(val_set)))])

    grid_params = [p for n, p in model.named_parameters() if n.endswith("embeddings")]
    other_params = [p for n, p in model.named_parameters() if not n.endswith("embeddings")]
    optimizer = torch.optim.Adam(
        [{"params": other_params}, {"params": grid_params, "lr": args.grid_learning_rate or args.learning_rate}],
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )
    model, optimizer, train_loader, lr_scheduler, steps_per_epoch, max_steps = prepare_with_schedule(
        accelerator, args, model, optimizer, train_loader)
    if use_gan:
        # DDP cannot differentiate twice through a wrapped module (the R1 and gradient penalties do), so the
        # discriminator stays unwrapped, starts from rank 0's weights and has its gradients averaged by hand.
        discriminator.to(accelerator.device)
        for parameter in discriminator.parameters():
            parameter.data.copy_(broadcast(parameter.data, from_process=0))
        # StyleGAN2's lazy regularisation: R1 every `interval` steps stands in for a separate step, so the
        # release scales D's learning rate and betas by c = interval / (interval + 1).
        c = args.r1_interval / (args.r1_interval + 1) if args.gan_loss == "r1" and args.r1_lazy_adjustment else 1.0
        disc_optimizer = torch.optim.Adam(discriminator.parameters(),
                                          lr=(args.disc_learning_rate or args.learning_rate) * c,
                                          betas=(args.adam_beta1**c, args.adam_beta2**c), eps=args.disc_adam_epsilon)
        accelerator.register_for_checkpointing(discriminator, disc_optimizer)
    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    ema = make_ema(accelerator, model, args, total_batch)
    register_checkpoint_hooks(accelerator, "autoencoder", ema)
    perceptual = None
    if args.perceptual_weight > 0 and args.perceptual_loss == "vgg":
        perceptual = VGGPerceptualLoss(args.lpips_weights, args.perceptual_resolution or None).to(accelerator.device)

    global_step, first_epoch, skip_batches = resume(accelerator, args, steps_per_epoch, lr_scheduler)

    logger.info(f"{len(train_set)} training images, {len(val_set)} held out; {max_steps} steps of batch "
                f"{args.train_batch_size} x {accelerator.num_processes} processes x {args.gradient_accumulation_steps}")
    progress = step_progress(accelerator, args, max_steps, global_step)
    generator = torch.Generator()
    epoch, first_step, micro_step, step_logs = first_epoch, global_step, 0, StepLogs()
    start_time = time.monotonic()
    while global_step < max_steps:
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        skip_batches = 0
        for images in loader:
            # Per-step, per-process randomness that does not depend on where a run was interrupted.
            generator.manual_seed(micro_batch_seed(args, global_step, micro_step, accelerator.process_index))
            if args.random_flip:
                flip = (torch.rand(images.shape[0], generator=generator) < 0.5).view(-1, 1, 1, 1)
                images = torch.where(flip.to(images.device), images.flip(-1), images)
            gan_active = use_gan and global_step >= args.disc_start
            with accelerator.accumulate(model):
                logs = autoencoder_step(args, accelerator, model, discriminator if gan_active else None, optimizer,
                                        lr_scheduler, images, generator, perceptual)
                if gan_active:
                    logs.update(discriminator_step(args, accelerator, discriminator, disc_optimizer, images,
                                                   logs.pop("reconstruction"), global_step, generator))
                logs.pop("reconstruction", None)
            step_logs.add(logs)
            if not accelerator.sync_gradients:
                micro_step += 1
                continue
            micro_step = 0
            logs = {**step_logs.reduce(accelerator), "lr": lr_scheduler.get_last_lr()[0]}
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            global_step += 1
            progress.update(1)
            progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items()
                                  if k in ("loss", "l2", "vgg", "lpips_vgg", "d_loss")})
            accelerator.log(logs, step=global_step)
            if time_is_up(accelerator, args, start_time, global_step):
                max_steps = global_step
            if global_step % args.checkpointing_steps == 0 or global_step >= max_steps:
                save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
            if global_step % args.validation_steps == 0 and accelerator.is_main_process:
                validate(args, accelerator, model, ema, val_loader, fixed_images, global_step)
            if global_step >= max_steps:
                break
        epoch += 1
    progress.close()
    elapsed = time.monotonic() - start_time
    trained_images = (global_step - first_step) * total_batch
    throughput = {"train_seconds": elapsed, "train_images_per_second": trained_images / max(elapsed, 1e-9)}
    check_in_sync(accelerator, model)
    if use_gan:
        check_in_sync(accelerator, discriminator)
    if accelerator.is_main_process:
        finish(args, accelerator, model, ema, val_loader, fixed_images, global_step, throughput)


def autoencoder_step(args, accelerator, model, discriminator, optimizer, lr_scheduler, images, generator,
                     vgg_loss=None) -> dict:
    """One optimisation step of encoder, grids and decoder; returns the logged losses and the reconstruction.
    ``vgg_loss``: the VGG perceptual loss module (``--perceptual_loss vgg``)."""
    out = model(images, sample_posterior=True, generator=generator)
    recon = out.sample
    l2 = F.mse_loss(recon.float(), images.float())
    loss = args.l2_weight * l2
    logs = {"l2": l2.item()}
    if args.perceptual_weight > 0:
        if vgg_loss is not None:
            perceptual, name = vgg_loss(recon.float(), images.float()), "vgg"
        else:
            perceptual = lpips(recon.float(), images.float(), net="vgg", weights_path=args.lpips_weights).mean()
            name = "lpips_vgg"
        loss = loss + args.perceptual_weight * perceptual
        logs[name] = perceptual.item()
    if args.kl_weight > 0:
        kl = kl_loss(out.key_code_posterior, args.kl_reduction)
        loss = loss + args.kl_weight * kl
        logs["kl"] = kl.item()
    if discriminator is not None:
        discriminator.requires_grad_(False)  # this loss trains the autoencoder only; D keeps its own gradients
        g_adv = generator_adversarial_loss(discriminator(recon), args.gan_loss)
        discriminator.requires_grad_(True)
        loss = loss + args.gan_weight * g_adv
        logs["g_adv"] = g_adv.item()
    accelerator.backward(loss)
    if args.max_grad_norm and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    logs.update(loss=loss.item(), reconstruction=recon.detach())
    return logs


def discriminator_step(args, accelerator, discriminator, disc_optimizer, images, recon, step, generator) -> dict:
    """One discriminator micro-batch: logistic + lazy R1 (every ``r1_interval`` steps), or WGAN-GP. Gradients
    accumulate over ``--gradient_accumulation_steps`` micro-batches like the autoencoder's; D steps with it."""
    logs = {}
    if args.gan_loss == "r1" and step % args.r1_interval == 0:
        penalty, real_logits = r1_penalty(discriminator, images)
        penalty_term = args.r1_gamma / 2 * penalty * args.r1_interval
        logs["r1"] = penalty.item()
    else:
        real_logits = discriminator(images)
        penalty_term = 0.0
    fake_logits = discriminator(recon)
    if args.gan_loss == "wgan-gp":
        penalty = gradient_penalty(discriminator, images, recon, generator)
        penalty_term = args.gp_weight * penalty
        logs["gp"] = penalty.item()
    d_loss = discriminator_adversarial_loss(real_logits, fake_logits, args.gan_loss)
    ((d_loss + penalty_term) / args.gradient_accumulation_steps).backward()
    if accelerator.sync_gradients:
        average_gradients(accelerator, discriminator)
        disc_optimizer.step()
        disc_optimizer.zero_grad(set_to_none=True)
    logs["d_loss"] = d_loss.item()
    return logs


def average_gradients(accelerator, module) -> None:
    """Mean of the gradients over all processes (one all-reduce of the flattened gradients)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction="mean")
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def validate(args, accelerator, model, ema, val_loader, fixed_images, step) -> tuple[dict, object]:
    """Held-out metrics and a reconstruction grid of the EMA model, logged and saved as a PNG."""
    metrics, grid = evaluate(ema_copy(accelerator, model, ema), val_loader, fixed_images, args.max_eval_images,
                             with_noise=args.eval_with_noise, seed=args.seed)
    accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
    log_image(accelerator, "val/reconstructions", grid, step)
    grid.save(os.path.join(args.output_dir, "reconstructions.png"))
    logger.info(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics, grid


def finish(args, accelerator, model, ema, val_loader, fixed_images, step, throughput: dict) -> None:
    """Save the EMA autoencoder, final metrics, a model card; push to the Hub when asked."""
    final = ema_copy(accelerator, model, ema)
    final.save_pretrained(os.path.join(args.output_dir, "autoencoder"))
    metrics, _ = validate(args, accelerator, model, ema, val_loader, fixed_images, step)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump({"step": step, **throughput, **metrics}, f, indent=2)
    data = args.dataset_name or args.train_data_dir or "the embedded emoji images (Google Noto Emoji, Apache-2.0)"
    write_model_card(
        args.output_dir,
        title=f"BRICS autoencoder ({args.model_config_name_or_path or args.preset})",
        description=(
            f"A BRICS autoencoder trained for {step} steps on {data} at {final.config.sample_size}x"
            f"{final.config.sample_size} with `examples/train_brics_ae.py` from diffusers-brics. Key codes "
            f"{final.config.latent_size}x{final.config.latent_size}x{final.latent_channels} in [0, 1].\n\n"
            "```python\nfrom diffusers_brics import BRICSAutoencoder\n"
            f"vae = BRICSAutoencoder.from_pretrained(\"{args.hub_model_id or args.output_dir}\", subfolder=\"autoencoder\")\n```\n\n"
            "Metrics on the held-out split (EMA weights"
            + ("; reconstructions with the relaxed-precision and decoder noise, as the BRICS release measures them"
               if args.eval_with_noise else "") + "); LPIPS uses AlexNet."
        ),
        config={k: v for k, v in vars(args).items() if v is not None and k != "hub_token"},
        metrics=metrics,
        image="reconstructions.png",
        dataset=args.dataset_name,
    )
    if args.push_to_hub:
        push_to_hub(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)


if __name__ == "__main__":
    main()
