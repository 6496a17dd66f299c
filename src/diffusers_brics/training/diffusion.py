"""Stage 2 as a training task: `DiffusionStage`, run by the `Trainer`, trains a UNet (`training.unet`) on the
latents of a `LatentSpace` (`training.latent_space`: BRICS key codes, a peer's latents or the images, cached or
encoded per batch) and saves the pipeline; `main` runs it from the command line (`training.diffusion_args`, whose
description says what the stage does), as ``brics train-diffusion`` and ``examples/train_brics_diffusion.py``.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from diffusers import DDPMPipeline, UNet2DModel
from diffusers.utils import make_image_grid

from ..models import adapters
from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.text_encoder import text_embedding_dim
from ..pipelines.loading import key_code_bound
from ..pipelines.pipeline_brics import BRICSPipeline
from ..pipelines.pipeline_brics_text2img import BRICSTextToImagePipeline
from ..schedules import min_snr_weights
from .conditioning import PromptTable, TextConditionedUNet, drop_conditions
from .config import DiffusionTrainingConfig, flat_settings
from .data import (
    ImageDataset,
    SkippedImages,
    captions_of,
    class_labels_of,
    collate_images,
    fit_batch_size,
    image_column_of,
    image_transform,
    load_image_datasets,
    undecoded,
)
from .diffusion_args import parse_args
from .distributed import example_generators
from .hub import pipeline_patterns
from .latent_space import LatentSpace, cached_codes
from .loop import StageParts, Trainer, TrainingStage
from .model_card import local_name, write_pipeline_card
from .reporting import log_image
from .unet import build_scheduler, build_unet, sampling_scheduler

logger = get_logger(__name__)


class DiffusionStage(TrainingStage):
    """Stage 2 for the `Trainer`: a UNet on the latents of a `LatentSpace` (key codes, a peer's latents or images;
    cached, or encoded per batch)."""

    def __init__(self, config: DiffusionTrainingConfig):
        self.config = config
        self.skipped = SkippedImages()

    def setup(self, trainer: Trainer) -> StageParts:
        c, accelerator = self.config, trainer.accelerator
        self.space = space = LatentSpace.load(c, accelerator.device)
        resolution = space.resolution
        with accelerator.main_process_first():
            train_set, _ = load_image_datasets(c.data.dataset_name, c.data.dataset_config_name, c.data.train_data_dir,
                                               resolution, c.data.cache_dir, hold_out=False)
        column = image_column_of(train_set, c.data.image_column)
        train_set = undecoded(train_set, column)
        conditions, self.class_names, self.prompts = {}, None, None
        if c.class_column:
            conditions["class_labels"], self.class_names = class_labels_of(train_set, c.class_column)
        if c.caption_column:
            conditions["caption_ids"], captions = captions_of(train_set, c.caption_column)
            self.text_encoder, self.tokenizer = self._text_encoder(captions, accelerator.device)
            with accelerator.main_process_first():
                self.prompts = PromptTable(captions, self.tokenizer,
                                           None if c.train_text_encoder else self.text_encoder,
                                           cache=os.path.join(c.loop.output_dir, "prompt_embeds.safetensors"))
            # validation prompts: distinct captions spread over the training set's
            self.validation_prompts = [captions[i * len(captions) // c.num_validation_images]
                                       for i in range(c.num_validation_images)]
        # Cached codes come from centre crops; random crops only when encoding on the fly.
        transform = image_transform(resolution, center_crop=c.center_crop or not c.encode_on_the_fly)
        examples = len(train_set) * (2 if c.random_flip and not c.encode_on_the_fly else 1)
        batch, note = fit_batch_size(examples, c.loop.train_batch_size, accelerator.num_processes,
                                     c.loop.gradient_accumulation_steps)
        if note:
            logger.warning(note)
            c.loop.train_batch_size = batch  # the Trainer's step size and log follow
        if c.encode_on_the_fly:
            for name, values in conditions.items():
                train_set = train_set.add_column(name, values)
            dataset = ImageDataset(train_set, column, transform, tuple(conditions), strict=c.data.strict_data)
            collate = collate_images
        else:
            dataset = cached_codes(accelerator, c, space, train_set, column, transform, conditions)

            def collate(rows):
                out = {"codes": torch.stack([row["key_codes"] for row in rows])}
                for name in conditions:
                    out[name] = torch.stack([row[name] for row in rows])
                return out

        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                             collate_fn=collate)
        self._set_scaling_factor(dataset)
        # the null class of conditioning dropout: one class id after the real ones
        self.null_class_id = len(self.class_names) if self.class_names and c.conditioning_dropout_prob else None
        classes = None if self.class_names is None else len(self.class_names) + (self.null_class_id is not None)
        width = text_embedding_dim(self.text_encoder) if self.prompts is not None else None
        unet = build_unet(c, space, classes, width)
        if c.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if c.train_text_encoder:
            unet = TextConditionedUNet.wrap(unet, self.text_encoder)
        self.noise_scheduler = build_scheduler(c, key_code_bound(space.vae))
        self.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(accelerator.device)
        optimizer_class = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(unet.parameters(), lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                    weight_decay=c.adam_weight_decay, eps=c.adam_epsilon)
        return StageParts("unet", unet, optimizer, loader, description=f"{len(train_set)} training images")

    def _text_encoder(self, captions: list[str], device) -> tuple[torch.nn.Module, object]:
        """``(text_encoder, tokenizer)``: ``--text_encoder_name_or_path``, or a `CLIPTextModel` of
        ``--text_encoder_preset`` (initialised from ``--seed``) with a tokenizer trained on ``captions``; frozen
        in eval mode unless ``--train_text_encoder``."""
        from ..models.text_encoder import build_text_encoder, load_text_encoder, train_caption_tokenizer

        c = self.config
        if c.text_encoder_name_or_path:
            text_encoder, tokenizer = load_text_encoder(c.text_encoder_name_or_path)
        else:
            tokenizer = train_caption_tokenizer(captions)
            with torch.random.fork_rng():
                torch.manual_seed(c.loop.seed)
                text_encoder = build_text_encoder(tokenizer, c.text_encoder_preset)
            logger.info(f"text encoder: a {c.text_encoder_preset} CLIPTextModel "
                        f"({sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M parameters) with a "
                        f"{len(tokenizer)}-token BPE tokenizer trained on the {len(captions)} distinct captions",
                        main_process_only=True)
            if not c.train_text_encoder:
                logger.warning("the text encoder built from a config is random and frozen: it tells prompts apart but "
                               "knows no language; --train_text_encoder trains it with the UNet")
        text_encoder = text_encoder.to(device).requires_grad_(False).eval()
        return text_encoder, tokenizer

    def _set_scaling_factor(self, dataset, sample: int = 1024) -> None:
        """``--scaling_factor`` into the VAE's config (saved with the pipeline): a number as it is; ``"fit"`` (and,
        when unset, a peer's latents) ``1 / std`` of up to ``sample`` training latents. Unset, a BRICS autoencoder
        keeps its own map onto ``[-1, 1]``; images (pixel space) are modelled as they are."""
        vae, factor = self.space.vae, self.config.scaling_factor
        if vae is None or (factor is None and isinstance(vae, BRICSAutoencoder)):
            return
        if factor is None or factor == "fit":
            rows = range(min(sample, len(dataset)))
            if isinstance(dataset, ImageDataset):
                latents = torch.cat([adapters.encode_latents(vae, torch.stack([dataset[i][0] for i in chunk]))
                                     for chunk in (rows[i : i + 64] for i in range(0, len(rows), 64))])
            else:
                latents = dataset[: len(rows)]["key_codes"]
            factor = adapters.fitted_scaling_factor(latents)
            logger.info(f"scaling_factor {factor:.5f} fitted to {len(rows)} training latents (1 / std)", main_process_only=True)
        vae.register_to_config(scaling_factor=float(factor))

    def training_step(self, trainer: Trainer, batch: dict, generator: torch.Generator, step: int) -> dict:
        """One micro-batch. Its draws (flips, noise, timesteps, dropped conditions) come from one generator per
        example (`example_generators`, not ``generator``), so a step's draws do not depend on how its batch is split
        into processes and micro-batches: P processes of batch B train as one process of batch P * B."""
        c, device = self.config, trainer.device
        size = len(batch["codes"] if "codes" in batch else batch["images"])
        generators = example_generators(c.loop.seed, step, trainer.example_positions(size))

        def per_example(draw) -> torch.Tensor:  # one draw of each example's generator, stacked along the batch
            return torch.stack([draw(g) for g in generators])

        if "codes" in batch:
            codes = batch["codes"]
        else:
            self.skipped.add(batch["skipped"])
            images = batch["images"].to(device)
            if c.random_flip:
                flip = per_example(lambda g: torch.rand((), generator=g) < 0.5).view(-1, 1, 1, 1).to(device)
                images = torch.where(flip, images.flip(-1), images)
            codes = self.space.encode(images)
        # latents -> diffusion space (BRICS key codes: [0, 1] -> by default [-1, 1]; images: as they are)
        x0 = self.space.to_diffusion_space(codes.float()).to(device)
        noise = per_example(lambda g: torch.randn(x0.shape[1:], generator=g)).to(device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = per_example(lambda g: torch.randint(0, steps, (), generator=g)).to(device)
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)
        condition = {}
        drop = None
        if c.conditioning_dropout_prob:
            drop = per_example(lambda g: drop_conditions(1, c.conditioning_dropout_prob, g)[0])
        if "class_labels" in batch:
            condition["class_labels"] = batch["class_labels"].to(device)
            if drop is not None:
                condition["class_labels"] = condition["class_labels"].masked_fill(drop.to(device), self.null_class_id)
        if "caption_ids" in batch:
            condition.update(self.prompts.condition(batch["caption_ids"], drop, device))
        prediction = trainer.model(noisy, timesteps, **condition).sample
        target = {"epsilon": noise, "sample": x0}.get(c.prediction_type)
        if target is None:
            target = self.noise_scheduler.get_velocity(x0, noise, timesteps)
        loss = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3))
        if c.snr_gamma:
            loss = loss * min_snr_weights(self.alphas_cumprod, timesteps, c.snr_gamma, c.prediction_type)
        loss = loss.mean()
        trainer.apply_gradients(loss, trainer.optimizer, trainer.model.parameters(), lr_scheduler=trainer.lr_scheduler)
        return {"loss": loss.item()}

    def end_of_epoch(self, trainer: Trainer, epoch: int) -> None:
        self.skipped.report(trainer.accelerator, epoch, logger)

    def pipeline(self, model: torch.nn.Module) -> BRICSPipeline | BRICSTextToImagePipeline | DDPMPipeline:
        """The pipeline of the trained ``model`` (the EMA weights) with the autoencoder and the class names (and
        null class), if any; a `BRICSTextToImagePipeline` with the text encoder and tokenizer for captions; in
        pixel space diffusers' own `DDPMPipeline` with the training scheduler. The BRICS pipelines sample with DDIM
        on the training schedule (`sampling_scheduler`, clipped to the key codes' range) and record
        ``--num_inference_steps`` as their ``default_num_inference_steps``: called with no step count, they run
        what the validation samples ran."""
        if self.space.pixels:
            return DDPMPipeline(unet=model, scheduler=self.noise_scheduler)
        scheduler, steps = sampling_scheduler(self.noise_scheduler), self.config.num_inference_steps
        if self.prompts is not None:
            unet, text_encoder = ((model.unet, model.text_encoder) if isinstance(model, TextConditionedUNet)
                                  else (model, self.text_encoder))
            return BRICSTextToImagePipeline(vae=self.space.vae, text_encoder=text_encoder, tokenizer=self.tokenizer,
                                            unet=unet, scheduler=scheduler, default_num_inference_steps=steps)
        names = self.class_names
        return BRICSPipeline(unet=model, scheduler=scheduler, vae=self.space.vae,
                             id2label=dict(enumerate(names)) if names else None, null_class_id=self.null_class_id,
                             default_num_inference_steps=steps)

    @property
    def guidance_scale(self) -> float:
        """The validation samples' guidance (``--validation_guidance_scale``; 1 without conditioning dropout)."""
        return self.config.validation_guidance_scale

    def validate(self, trainer: Trainer, model: UNet2DModel, step: int) -> dict[str, float]:
        """Samples from fixed seeds (cycling through the classes of a conditional UNet; one caption each for a text
        UNet), logged and saved as ``samples.png``."""
        pipeline = self.pipeline(model)
        pipeline.set_progress_bar_config(disable=True)
        count = self.config.num_validation_images
        generators = [torch.Generator().manual_seed(seed) for seed in range(count)]
        steps = self.config.num_inference_steps
        if self.prompts is not None:
            images = pipeline(self.validation_prompts, generator=generators, num_inference_steps=steps,
                              guidance_scale=self.guidance_scale).images
        else:
            # class labels only for a conditional UNet (a DDPMPipeline takes none)
            classes = {"class_labels": [i % len(self.class_names) for i in range(count)]} if self.class_names else {}
            if self.null_class_id is not None:
                classes["guidance_scale"] = self.guidance_scale
            images = pipeline(batch_size=count, generator=generators, num_inference_steps=steps, **classes).images
        grid = make_image_grid(images, rows=1, cols=len(images))
        grid.save(os.path.join(self.config.loop.output_dir, "samples.png"))
        log_image(trainer.accelerator, "samples", grid, step)
        return {}

    def finish(self, trainer: Trainer, model: UNet2DModel, step: int, summary: dict[str, float]) -> None:
        """Save the pipeline (EMA UNet, scheduler, autoencoder), a sample grid, ``metrics.json`` (the step and the
        training time and throughput) and a model card."""
        c = self.config
        if self.space.vae is not None:  # loaded from --autoencoder: its config would keep that (local) path
            self.space.vae.register_to_config(_name_or_path=local_name(c.autoencoder))
        self.pipeline(model).save_pretrained(c.loop.output_dir)
        self.validate(trainer, model, step)
        with open(os.path.join(c.loop.output_dir, "metrics.json"), "w") as f:
            json.dump({"step": step, **summary}, f, indent=2)
        text = self.prompts is not None
        write_pipeline_card(c, self.space, step, summary["train_seconds"], class_names=self.class_names,
                            text_encoder=self.text_encoder if text else None,
                            prompt=self.validation_prompts[0] if text else None, guidance_scale=self.guidance_scale)

    def hub_files(self) -> list[str]:
        return ["README.md", "metrics.json", "samples.png", *pipeline_patterns(self.config.loop.output_dir)]


def main(argv: list[str] | None = None) -> None:
    """Train a UNet on BRICS key codes (or a peer's latents, or images) from command-line arguments."""
    config = parse_args(argv)
    Trainer(config.loop, "train_brics_diffusion", flat_settings(config)).fit(DiffusionStage(config))


if __name__ == "__main__":  # also `accelerate launch -m diffusers_brics.training.diffusion ...`
    import sys

    from ..console import run_command

    sys.exit(run_command(main, prog="python -m diffusers_brics.training.diffusion"))
