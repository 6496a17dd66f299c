"""`BRICSTextToImagePipeline`: text-to-image generation by diffusion on BRICS key codes, conditioned on the hidden
states of a `transformers` text encoder, with classifier-free guidance, image-to-image and inpainting.

``transformers`` is imported only when a prompt is encoded (``pip install "diffusers-brics[text]"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel, VQModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.autoencoder_brics import BRICSAutoencoder
from ..utils import is_integer
from .base_pipeline import BRICSDiffusionPipeline
from .inputs import ImageInput, MaskInput, check_editing_inputs, check_sampling_inputs, count_images, prepare_edit
from .sampling import check_default_steps, denoise, inference_steps, to_output


def as_prompt_list(value: str | list[str] | None, name: str) -> list[str] | None:
    """``value`` as a list of strings (None stays None), or a ValueError naming ``name``."""
    if value is None:
        return None
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {value!r}")
    return list(prompts)


class BRICSTextToImagePipeline(BRICSDiffusionPipeline):
    r"""Generates images from text by denoising key codes with a `UNet2DConditionModel` that cross-attends to a
    text encoder's hidden states, and decoding them with a `BRICSAutoencoder`.

    Components:
        vae (`BRICSAutoencoder`): decodes the key codes (diffusers' `AutoencoderKL` and `VQModel` work too).
        text_encoder (`transformers.PreTrainedModel`): any text encoder whose first output is the hidden states
            ``(B, T, D)`` (`CLIPTextModel`, `T5EncoderModel`, ...).
        tokenizer (`transformers.PreTrainedTokenizerBase`): its tokenizer; prompts are padded to its
            ``model_max_length``.
        unet (`UNet2DConditionModel`): predicts the noise on key codes in diffusion space (see `BRICSPipeline`),
            with ``cross_attention_dim`` ``D``.
        scheduler (`SchedulerMixin`): any scheduler of the DDPM family.
        default_num_inference_steps (`int`, optional): the step count ``__call__`` runs when given none, saved in
            ``model_index.json`` (training records the one its samples used, with a DDIM scheduler).

    Stage 2 trains one with ``--caption_column`` (`diffusers_brics.training.diffusion`). The unconditional
    prediction of classifier-free guidance is the UNet's on ``negative_prompt`` (by default the empty prompt, with
    which training replaced captions at ``--conditioning_dropout_prob``).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: BRICSAutoencoder | AutoencoderKL | VQModel, text_encoder, tokenizer,
                 unet: UNet2DConditionModel, scheduler: SchedulerMixin, default_num_inference_steps: int | None = None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_to_config(default_num_inference_steps=check_default_steps(default_num_inference_steps))

    # ------------------------------------------------------------------ prompts
    def embed(self, prompts: list[str]) -> torch.Tensor:
        """The text encoder's hidden states ``(len(prompts), T, D)`` of prompts padded to the tokenizer's
        ``model_max_length``, as training computed them."""
        from ..models.text_encoder import encode_prompts

        return encode_prompts(self.text_encoder, self.tokenizer, prompts).to(self._execution_device)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)``, each ``(P * num_images_per_prompt, T, D)`` for ``P`` prompts
        (the negative ones None without guidance); given embeddings are used as they are."""
        prompts = as_prompt_list(prompt, "prompt")
        if prompt_embeds is None:
            prompt_embeds = self.embed(prompts)
        count = len(prompt_embeds)
        negative = None
        if do_classifier_free_guidance:
            negative = negative_prompt_embeds
            if negative is None:
                negatives = as_prompt_list(negative_prompt, "negative_prompt") or [""]
                negative = self.embed(negatives if len(negatives) == count else negatives * count)
            negative = negative.to(prompt_embeds)
        repeat = (lambda x: x.repeat_interleave(num_images_per_prompt, dim=0)) if num_images_per_prompt > 1 else None
        if repeat is not None:
            prompt_embeds = repeat(prompt_embeds)
            negative = repeat(negative) if negative is not None else None
        return prompt_embeds, negative

    def check_prompt_inputs(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                            num_images_per_prompt) -> int:
        """The number of prompts ``P``; a ValueError naming the first prompt argument that cannot work."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass prompt or prompt_embeds, not both")
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass prompt (a string or a list of strings) or prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
        if not is_integer(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        width = self.unet.config.cross_attention_dim
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is None:
                continue
            if not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != width:
                raise ValueError(f"{name} must be a tensor (P, T, {width}) (the unet's cross_attention_dim), got "
                                 f"{tuple(getattr(embeds, 'shape', ())) or type(embeds).__name__}")
            if not embeds.is_floating_point() or not bool(torch.isfinite(embeds).all()):
                raise ValueError(f"{name} must be finite floating-point values")
        if prompt_embeds is not None and negative_prompt_embeds is not None and (
            negative_prompt_embeds.shape != prompt_embeds.shape
        ):
            raise ValueError(f"negative_prompt_embeds must have the shape of prompt_embeds "
                             f"{tuple(prompt_embeds.shape)}, got {tuple(negative_prompt_embeds.shape)}")
        count = len(as_prompt_list(prompt, "prompt")) if prompt is not None else len(prompt_embeds)
        negatives = as_prompt_list(negative_prompt, "negative_prompt")
        if negatives is not None and len(negatives) not in (1, count):
            raise ValueError(f"negative_prompt must be one string or one per prompt ({count}), got {len(negatives)}")
        if prompt is not None and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError("this pipeline has no text_encoder and tokenizer: pass prompt_embeds")
        return count

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | np.ndarray | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        image: ImageInput | None = None,
        strength: float | None = None,
        mask_image: MaskInput | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict | None] | None = None,
        eta: float = 0.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images from ``prompt``, or edit ``image`` guided by it.

        Args:
            prompt: the text, or one per prompt of a batch.
            negative_prompt: the text guidance steers away from (one, or one per prompt; default: the empty
                prompt, the unconditional model of training).
            guidance_scale: classifier-free guidance (1: the conditional model alone, one UNet pass per step).
            num_images_per_prompt: images per prompt; the batch is ``len(prompt) * num_images_per_prompt``.
            num_inference_steps: denoising steps (1 to the scheduler's ``num_train_timesteps``). None: the
                pipeline's ``default_num_inference_steps``, else the scheduler's default, as in `BRICSPipeline`.
            generator: a `torch.Generator`, or one per image of the batch.
            latents: initial noise ``(batch, C_z, H_z, W_z)``; with ``image``, the noise added to its key codes.
            prompt_embeds / negative_prompt_embeds: text-encoder hidden states ``(P, T, D)`` instead of the texts.
            image: image(s) to edit (pictures, files, or a ``(N, 3, S, S)`` tensor in ``[-1, 1]``): one, one per
                prompt, or one per image of the batch.
            strength: image-to-image strength in ``[0, 1]`` (0: the image's reconstruction; 1: the image ignored
                where generated); default 0.8, or 1 with ``mask_image``.
            mask_image: inpainting mask in the image's pixels (white: generate, black: keep the image's key codes).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (key codes), as in `BRICSPipeline`.
            return_dict: return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None`` after every step.
            eta: the DDIM ``eta``; ignored by schedulers without it.
        """
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(latents)
        prompts = self.check_prompt_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                           num_images_per_prompt)
        batch_size = prompts * num_images_per_prompt
        num_inference_steps = inference_steps(self, num_inference_steps)
        strength = check_editing_inputs(image, strength, mask_image)
        check_sampling_inputs(self, batch_size, num_inference_steps, latents, generator, output_type, eta,
                              callback_on_step_end, guidance_scale)
        if image is not None:
            count = count_images(image)
            if count not in (1, prompts, batch_size):
                raise ValueError(f"image: expected one image, one per prompt ({prompts}) or one per generated image "
                                 f"({batch_size}), got {count}")
            if count == prompts and count not in (1, batch_size):  # one per prompt: repeated as the prompts are
                image = _repeat_images(image, num_images_per_prompt)
                if mask_image is not None and _count_masks(mask_image) == count:
                    mask_image = _repeat_images(mask_image, num_images_per_prompt)
        guided = guidance_scale != 1
        embeds, negative = self.encode_prompt(prompt, num_images_per_prompt, guided, negative_prompt, prompt_embeds,
                                              negative_prompt_embeds)
        dtype = self.unet.dtype
        condition = {"encoder_hidden_states": embeds.to(dtype)}
        null_condition = {"encoder_hidden_states": negative.to(dtype)} if negative is not None else None
        image_codes, mask = prepare_edit(self, image, mask_image, batch_size) if image is not None else (None, None)
        key_codes = denoise(self, batch_size, num_inference_steps, generator, latents, condition, null_condition,
                            guidance_scale, image_codes, strength, mask, eta, callback_on_step_end)
        return to_output(self, key_codes, output_type, return_dict)


def _repeat_images(images, times: int):
    """Each image of a list (or batch tensor / array) ``times`` times in a row."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return images.repeat_interleave(times, 0) if isinstance(images, torch.Tensor) else images.repeat(times, 0)
    return [item for item in images for _ in range(times)]


def _count_masks(masks) -> int:
    """How many masks ``mask_image`` holds: a list's length, the first axis of a 3-d or 4-d array, else 1."""
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        return int(masks.shape[0]) if masks.ndim in (3, 4) else 1
    return len(masks) if isinstance(masks, (list, tuple)) else 1
