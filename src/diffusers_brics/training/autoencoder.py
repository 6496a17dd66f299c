"""Stage 1 as a training task: `AutoencoderStage`, run by the `Trainer`, trains a BRICS autoencoder (or diffusers'
`AutoencoderKL`, `VQModel` or `ClusteredVQModel`, `build_model`) against a StyleGAN2 discriminator and validates it on held-out images;
`main` runs it from the command line (`training.autoencoder_args`, whose description gives the losses and
optimisers), as ``brics train-ae`` and ``examples/train_brics_ae.py``.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ..metrics import lpips
from ..models import adapters
from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.clustered_vq_model import CVQ_SETTINGS, ClusteredVQModel
from .autoencoder_args import parse_args
from .autoencoder_evaluation import evaluation_loader, reconstruction_metrics
from .config import AutoencoderTrainingConfig, flat_settings
from .data import (
    ImageDataset,
    SkippedImages,
    collate_images,
    fit_batch_size,
    image_column_of,
    image_transform,
    load_image_datasets,
    undecoded,
)
from .discriminator import StyleGAN2Discriminator
from .distributed import broadcast_parameters, check_in_sync
from .loop import StageParts, Trainer, TrainingStage
from .losses import (
    VGGPerceptualLoss,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    gradient_penalty,
    kl_loss,
    r1_penalty,
)
from .model_card import write_autoencoder_card
from .reporting import log_image
from .separate_step import SeparateStep

logger = get_logger(__name__)


def build_model(config: AutoencoderTrainingConfig) -> torch.nn.Module:
    """The untrained autoencoder (of ``--model_type``) of ``--model_config_name_or_path`` or ``--preset``."""
    path = config.model_config_name_or_path
    settings = {name: getattr(config, name) for name in CVQ_SETTINGS} if config.model_type == "cvqvae" else None
    if not path:
        return adapters.build_autoencoder(config.model_type, config.preset, settings=settings)
    try:
        model_config = BRICSAutoencoder.load_config(path)
    except OSError as error:  # diffusers reports a missing folder as a failed Hub download
        nested = os.path.join(path, "autoencoder", "config.json")
        hint = f"; a stage-1 output folder keeps it in {os.path.dirname(nested)!r}" if os.path.isfile(nested) else ""
        raise FileNotFoundError(f"--model_config_name_or_path {path!r}: no config.json, neither in a local folder nor "
                                f"in a Hub repo{hint} ({error})") from error
    try:
        return adapters.build_autoencoder(config.model_type, config=model_config, settings=settings)
    except ValueError as error:
        raise ValueError(f"--model_config_name_or_path {path!r}: {error}") from error


class AutoencoderStage(TrainingStage):
    """Stage 1 for the `Trainer`: the autoencoder (prepared, DDP) and a discriminator kept out of DDP."""

    progress_keys = ("loss", "l2", "vgg", "lpips_vgg", "kl", "vq", "d_loss")

    def __init__(self, config: AutoencoderTrainingConfig):
        self.config = config
        self.discriminator = self.disc_optimizer = self.r1_step = self.vgg_loss = None
        self.skipped = SkippedImages()

    def setup(self, trainer: Trainer) -> StageParts:
        c, loss, accelerator = self.config, self.config.loss, trainer.accelerator
        model = build_model(c)
        resolution = c.resolution or model.config.sample_size
        if resolution != model.config.sample_size:
            raise ValueError(f"--resolution {resolution} does not match the model's sample_size "
                             f"{model.config.sample_size}")
        if isinstance(model, BRICSAutoencoder) and loss.kl_weight > 0 and (
            not model.config.kl_key_codes or model.config.relaxed_precision
        ):
            # Paper config c: KL-regularised key codes take the place of the relaxed-precision noise (config d).
            # Keywords, not a merged dict: keys in the config's `_use_default_values` would be reset to defaults.
            model = BRICSAutoencoder.from_config(model.config, kl_key_codes=True, relaxed_precision=False)
        if c.gradient_checkpointing:
            model.enable_gradient_checkpointing()

        with accelerator.main_process_first():
            train_set, val_set = load_image_datasets(
                c.data.dataset_name, c.data.dataset_config_name, c.data.train_data_dir, resolution, c.data.cache_dir,
                c.validation_fraction, c.loop.seed,
            )
        column = image_column_of(train_set, c.data.image_column)
        train_set, val_set = undecoded(train_set, column), undecoded(val_set, column)
        batch, note = fit_batch_size(len(train_set), c.loop.train_batch_size, accelerator.num_processes,
                                     c.loop.gradient_accumulation_steps)
        if note:
            logger.warning(note)
            c.loop.train_batch_size = batch  # the Trainer's step size and log follow
        images = ImageDataset(train_set, column, image_transform(resolution, c.center_crop), strict=c.data.strict_data)
        loader = torch.utils.data.DataLoader(images, batch_size=batch, shuffle=True, drop_last=True,
                                             collate_fn=collate_images, num_workers=c.dataloader_num_workers)
        self.val_loader = evaluation_loader(val_set, column, resolution, c.eval_batch_size, c.max_eval_images,
                                            c.data.strict_data)
        held_out = ImageDataset(val_set, column, image_transform(resolution, True), strict=c.data.strict_data)
        self.fixed_images = torch.stack([held_out[i][0] for i in range(min(c.num_validation_images, len(val_set)))])

        grids = [p for n, p in model.named_parameters() if n.endswith("embeddings")]
        others = [p for n, p in model.named_parameters() if not n.endswith("embeddings")]
        optimizer = torch.optim.Adam(
            [{"params": others}, {"params": grids, "lr": c.grid_learning_rate or c.learning_rate}],
            lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_epsilon,
        )
        extra = []
        if loss.gan_weight > 0:
            large = resolution >= 256
            self.discriminator = StyleGAN2Discriminator(
                resolution=resolution,
                channel_base=loss.disc_channel_base or (32768 if large else 64 * resolution),
                channel_max=loss.disc_channel_max or (512 if large else 256),
                num_fp16_res=loss.disc_num_fp16_res, conv_clamp=loss.disc_conv_clamp,
            ).to(accelerator.device)
            # DDP cannot differentiate twice through a wrapped module (the R1 and gradient penalties do), so the
            # discriminator stays unwrapped, starts from rank 0's weights and has its gradients averaged by hand.
            broadcast_parameters(self.discriminator)
            # StyleGAN2's lazy regularisation: R1 every `interval` steps stands in for a separate step, so the
            # release scales D's learning rate and betas by c = interval / (interval + 1).
            lazy_r1 = loss.gan_loss == "r1" and loss.r1_lazy_adjustment
            lazy = loss.r1_interval / (loss.r1_interval + 1) if lazy_r1 else 1.0
            self.disc_optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=(c.disc_learning_rate or c.learning_rate) * lazy,
                betas=(c.adam_beta1**lazy, c.adam_beta2**lazy), eps=c.disc_adam_epsilon)
            if loss.r1_separate_step and loss.gan_loss == "r1":  # the release: R1 its own step of D's optimizer
                self.r1_step = SeparateStep(self.discriminator, self.disc_optimizer)
            extra = [self.discriminator, self.disc_optimizer]
        if loss.perceptual_weight > 0 and loss.perceptual_loss == "vgg":
            self.vgg_loss = VGGPerceptualLoss(loss.lpips_weights, loss.perceptual_resolution or None)
            self.vgg_loss.to(accelerator.device)
        return StageParts("autoencoder", model, optimizer, loader, extra,
                          description=f"{len(train_set)} training images, {len(val_set)} held out")

    def training_step(self, trainer: Trainer, batch: dict, generator: torch.Generator, step: int) -> dict:
        self.skipped.add(batch["skipped"])
        images = batch["images"]
        if self.config.random_flip:
            flip = (torch.rand(images.shape[0], generator=generator) < 0.5).view(-1, 1, 1, 1)
            images = torch.where(flip.to(images.device), images.flip(-1), images)
        gan = self.discriminator is not None and step >= self.config.loss.disc_start
        logs, recon = self._autoencoder_step(trainer, images, generator, gan)
        if gan:
            if self.config.loss.disc_recompute_reconstruction:
                # the release: D trains on the output of the autoencoder after its update (a second forward)
                trainer.apply_queued_updates()
                with torch.no_grad():
                    recon = self._reconstruct(trainer, images, generator)[0].detach()
            logs.update(self._discriminator_step(trainer, images, recon, step, generator))
        return logs

    def _autoencoder_step(self, trainer, images, generator, gan: bool) -> tuple[dict, torch.Tensor]:
        """Encoder, grids and decoder: returns the logged losses and the (detached) reconstruction."""
        loss_config = self.config.loss
        recon, posterior, vq_loss = self._reconstruct(trainer, images, generator)
        l2 = F.mse_loss(recon.float(), images.float())
        loss = loss_config.l2_weight * l2
        logs = {"l2": l2.item()}
        if vq_loss is not None:
            loss = loss + loss_config.codebook_weight * vq_loss
            logs["vq"] = vq_loss.item()
        if loss_config.perceptual_weight > 0:
            if self.vgg_loss is not None:
                perceptual, name = self.vgg_loss(recon.float(), images.float()), "vgg"
            else:
                perceptual = lpips(recon.float(), images.float(), net="vgg", weights_path=loss_config.lpips_weights)
                perceptual, name = perceptual.mean(), "lpips_vgg"
            loss = loss + loss_config.perceptual_weight * perceptual
            logs[name] = perceptual.item()
        if loss_config.kl_weight > 0:
            kl = kl_loss(posterior, loss_config.kl_reduction)
            loss = loss + loss_config.kl_weight * kl
            logs["kl"] = kl.item()
        if gan:
            self.discriminator.requires_grad_(False)  # this loss trains the autoencoder only
            g_adv = generator_adversarial_loss(self.discriminator(recon), loss_config.gan_loss)
            self.discriminator.requires_grad_(True)
            loss = loss + loss_config.gan_weight * g_adv
            logs["g_adv"] = g_adv.item()
        trainer.apply_gradients(loss, trainer.optimizer, trainer.model.parameters(), lr_scheduler=trainer.lr_scheduler)
        logs["loss"] = loss.item()
        return logs, recon.detach()

    def _reconstruct(self, trainer, images, generator):
        """``(reconstruction, posterior or None, VQ loss or None)`` of a training forward through the prepared
        (possibly DDP-wrapped or compiled) model, so that its gradients are synchronised as any model's."""
        model = trainer.unwrap()
        if isinstance(model, BRICSAutoencoder):
            # The training draws, explicitly: the KL sample, the relaxed-precision noise and the decoder's noise inputs
            # (a compiled model draws them from the global RNG, seeded from the generator).
            out = trainer.model(images, sample_posterior=True, relaxed_precision=model.config.relaxed_precision,
                                noise_mode="random", generator=trainer.forward_generator(generator))
            return out.sample, out.key_code_posterior, None
        if isinstance(model, AutoencoderKL):
            # AutoencoderKL.forward returns only the reconstruction: its posterior's moments are read off the layer
            # that makes them, during that same forward.
            with output_of(model.quant_conv if model.quant_conv is not None else model.encoder) as moments:
                out = trainer.model(images, sample_posterior=True, generator=trainer.forward_generator(generator))
            return out.sample, DiagonalGaussianDistribution(moments[0]), None
        if isinstance(model, ClusteredVQModel):  # its anchors are global-RNG draws: seeded from the step's generator
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        out = trainer.model(images)  # VQModel: straight-through quantisation, codebook + commitment loss
        return out.sample, None, out.commit_loss

    def _discriminator_step(self, trainer, images, recon, step: int, generator) -> dict:
        """Logistic + lazy R1 (every ``r1_interval`` steps), or WGAN-GP. Gradients accumulate over the micro-batches
        like the autoencoder's; D steps with it. R1 is in D's loss, or, with ``r1_separate_step`` (the release), a
        step of D's optimizer of its own after the main one (`SeparateStep`)."""
        loss_config, disc = self.config.loss, self.discriminator
        logs = {}
        r1_now = loss_config.gan_loss == "r1" and step % loss_config.r1_interval == 0
        if r1_now and self.r1_step is None:
            penalty, real_logits = r1_penalty(disc, images)
            penalty_term = loss_config.r1_gamma / 2 * penalty * loss_config.r1_interval
            logs["r1"] = penalty.item()
        else:
            real_logits = disc(images)
            penalty_term = 0.0
        fake_logits = disc(recon)
        if loss_config.gan_loss == "wgan-gp":
            penalty = gradient_penalty(disc, images, recon, generator)
            penalty_term = loss_config.gp_weight * penalty
            logs["gp"] = penalty.item()
        d_loss = discriminator_adversarial_loss(real_logits, fake_logits, loss_config.gan_loss)
        trainer.apply_gradients(d_loss + penalty_term, self.disc_optimizer, disc.parameters(), prepared=False)
        logs["d_loss"] = d_loss.item()
        if r1_now and self.r1_step is not None:
            penalty, _ = r1_penalty(self.r1_step, images)
            term = loss_config.r1_gamma / 2 * penalty * loss_config.r1_interval
            trainer.apply_gradients(term, self.r1_step, self.r1_step.shadows, prepared=False)
            logs["r1"] = penalty.item()
        return logs

    def validate(self, trainer: Trainer, model: torch.nn.Module, step: int) -> dict[str, float]:
        """Held-out metrics and a reconstruction grid of the EMA model, logged and saved as a PNG."""
        c = self.config
        metrics, grid = reconstruction_metrics(model, self.val_loader, self.fixed_images, with_noise=c.eval_with_noise,
                                               seed=c.loop.seed)
        log_image(trainer.accelerator, "val/reconstructions", grid, step)
        grid.save(os.path.join(c.loop.output_dir, "reconstructions.png"))
        return metrics

    def end_of_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.skipped.report(trainer.accelerator, epoch, logger)

    def check_in_sync(self, trainer: Trainer) -> None:
        if self.discriminator is not None:
            check_in_sync(trainer.accelerator, self.discriminator)

    def finish(self, trainer: Trainer, model: torch.nn.Module, step: int, summary: dict[str, float]) -> None:
        """Save the EMA autoencoder (a `ClusteredVQModel` as a stock `VQModel`), final metrics and a model card."""
        c = self.config
        output = c.loop.output_dir
        saved = adapters.saved_form(model)
        saved.save_pretrained(os.path.join(output, "autoencoder"))
        metrics = self.validate(trainer, model, step)
        trainer.accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        with open(os.path.join(output, "metrics.json"), "w") as f:
            json.dump({"step": step, **summary, **metrics}, f, indent=2)
        write_autoencoder_card(c, saved, step, summary["train_seconds"], metrics)

    def hub_files(self) -> list[str]:
        return ["README.md", "metrics.json", "reconstructions.png", "autoencoder/*"]

    def saved_folder(self, output_dir: str) -> str:
        return os.path.join(output_dir, "autoencoder")


@contextlib.contextmanager
def output_of(module: torch.nn.Module):
    """Yields a list that receives ``module``'s output at each forward within the block."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def main(argv: list[str] | None = None) -> None:
    """Train a BRICS autoencoder from command-line arguments."""
    config = parse_args(argv)
    Trainer(config.loop, "train_brics_ae", flat_settings(config)).fit(AutoencoderStage(config))


if __name__ == "__main__":  # also `accelerate launch -m diffusers_brics.training.autoencoder ...`
    import sys

    from ..console import run_command

    sys.exit(run_command(main, prog="python -m diffusers_brics.training.autoencoder"))
