"""Sampling key codes: the BRICS pipelines' denoising loop, in the steps of diffusers' pipelines (initial noise, the
timesteps, the loop with the UNet's prediction and the scheduler's step, and the final decode).

Vocabulary:

* *classifier-free guidance* (Ho & Salimans 2022): the UNet predicts the noise with the condition and with a null
  condition (the empty prompt, or a learned null class), and the sampler follows
  ``uncond + guidance_scale * (cond - uncond)``; ``guidance_scale=1`` is the conditional model alone (one UNet pass).
* *image-to-image* (SDEdit, Meng et al. 2022): the image's key codes, noised to the timestep that ``strength`` picks
  (0: none, the image's reconstruction; 1: pure noise, the image ignored), then denoised.
* *inpainting* (RePaint-style blending, Lugmayr et al. 2022): a mask on the key-code grid (see
  `diffusers_brics.pipelines.inputs.prepare_mask`); after every step the kept positions are replaced by the
  image's key codes noised to the next timestep, and at the end by the key codes themselves, so the kept key codes
  come back exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.adapters import decode_latents, from_diffusion_space, to_diffusion_space
from ..models.adapters import latent_shape as latent_shape_of
from ..schedules import cosine_variant_betas
from ..utils import is_integer

StepCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict], "dict | None"]

# Steps of DDIM, DPM-Solver and the like for a pipeline that records no step count of its own.
DEFAULT_INFERENCE_STEPS = 50


def default_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The paper's default schedule (Chen 2023 cosine variant, start 0.2, end 1, tau 1.5), epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        trained_betas=cosine_variant_betas(num_train_timesteps).tolist(),
        prediction_type="epsilon",
        clip_sample=False,
    )


def scheduler_default_steps(scheduler) -> int:
    """The step count for a pipeline that records none: ``num_train_timesteps`` for DDPM's ancestral sampler (the
    training schedule, as diffusers' `DDPMPipeline` runs it), else `DEFAULT_INFERENCE_STEPS` (DDIM, DPM-Solver, ...),
    at most ``num_train_timesteps``."""
    train_steps = int(scheduler.config.num_train_timesteps)
    return train_steps if isinstance(scheduler, DDPMScheduler) else min(DEFAULT_INFERENCE_STEPS, train_steps)


def inference_steps(pipeline: DiffusionPipeline, num_inference_steps: int | None) -> int | None:
    """``num_inference_steps``, or when None the pipeline's recommended ``default_num_inference_steps`` (saved by
    training in ``model_index.json``), else its scheduler's default (`scheduler_default_steps`)."""
    if num_inference_steps is not None:
        return num_inference_steps
    recommended = pipeline.config.get("default_num_inference_steps")
    return recommended if recommended is not None else scheduler_default_steps(pipeline.scheduler)


def check_default_steps(value: int | None) -> int | None:
    """``default_num_inference_steps`` of a pipeline's constructor: None or a positive integer (a ValueError
    otherwise)."""
    if value is None:
        return None
    if not is_integer(value) or value < 1:
        raise ValueError(f"default_num_inference_steps must be a positive integer or None, got {value!r}")
    return int(value)


def extra_step_kwargs(scheduler, generator: torch.Generator | list[torch.Generator] | None,
                      eta: float) -> dict[str, object]:
    """The ``generator`` and ``eta`` keywords of ``scheduler.step``, for the schedulers that take them."""
    accepted = inspect.signature(scheduler.step).parameters
    return {name: value for name, value in (("generator", generator), ("eta", eta)) if name in accepted}


# ---------------------------------------------------------------------- before the loop
def prepare_noise(vae: torch.nn.Module, batch_size: int, generator: torch.Generator | list[torch.Generator] | None,
                  latents: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The initial noise ``(batch_size, C_z, H_z, W_z)`` on ``device``: ``latents`` when given, else drawn from
    ``generator``."""
    if latents is not None:
        return latents.to(device=device, dtype=dtype)
    return randn_tensor((batch_size, *latent_shape_of(vae)), generator=generator, device=device, dtype=dtype)


def prepare_timesteps(scheduler, num_inference_steps: int, device: torch.device,
                      strength: float | None = None) -> torch.Tensor:
    """The timesteps to run: the scheduler's ``num_inference_steps``, or for image-to-image (a ``strength``) the last
    ``strength`` of them, as diffusers' image-to-image pipelines count it (SDEdit)."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    if strength is not None:
        skipped = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
        timesteps = timesteps[skipped * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skipped * scheduler.order)
    return timesteps


def noised_image(scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, i: int) -> torch.Tensor:
    """The image's latents ``x0`` (in diffusion space) noised with ``noise`` to ``timesteps[i]``; ``x0`` itself
    past the last timestep."""
    if i >= len(timesteps):
        return x0
    return scheduler.add_noise(x0, noise, timesteps[i : i + 1].repeat(len(noise)))


def prepare_latents(scheduler, noise: torch.Tensor, timesteps: torch.Tensor, x0: torch.Tensor | None,
                    strength: float | None, mask: torch.Tensor | None) -> torch.Tensor:
    """The latents the loop starts from: the noise at the scheduler's initial scale (also for ``strength`` 1: the
    image's key codes only where kept); for image-to-image, the image's latents ``x0`` noised to the first timestep
    (``x0`` itself when no step is left, strength 0); for inpainting, those where ``mask`` keeps the image."""
    if x0 is None or strength == 1:
        latents = noise * scheduler.init_noise_sigma
    elif len(timesteps):
        latents = noised_image(scheduler, x0, noise, timesteps, 0)
    else:
        latents = x0
    if mask is not None and len(timesteps):
        latents = torch.where(mask, latents, noised_image(scheduler, x0, noise, timesteps, 0))
    return latents


def guidance_inputs(condition: dict[str, torch.Tensor],
                    null_condition: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet's keyword inputs for classifier-free guidance: the null condition and the condition in one batch."""
    return {name: torch.cat([null_condition[name], value]) for name, value in condition.items()}


# ---------------------------------------------------------------------- one step of the loop
def combine_guidance(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance of a prediction on the batch of `guidance_inputs`: ``uncond + guidance_scale *
    (cond - uncond)``."""
    unconditional, conditional = noise_pred.chunk(2)
    return unconditional + guidance_scale * (conditional - unconditional)


def predict_noise(unet: torch.nn.Module, scheduler, latents: torch.Tensor, t: torch.Tensor,
                  inputs: dict[str, torch.Tensor], guidance_scale: float | None) -> torch.Tensor:
    """The UNet's noise prediction on ``latents`` at timestep ``t``; with a ``guidance_scale``, on the latents twice
    (for the null condition and the condition of ``inputs``), combined by `combine_guidance`."""
    guided = guidance_scale is not None
    model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
    noise_pred = unet(model_input, t, **inputs).sample
    return combine_guidance(noise_pred, guidance_scale) if guided else noise_pred


def run_callback(callback: StepCallback, pipeline: DiffusionPipeline, i: int, t: torch.Tensor,
                 latents: torch.Tensor) -> torch.Tensor:
    """The latents after ``callback_on_step_end``: the ``"latents"`` it returns, else the same ones."""
    changes = callback(pipeline, i, t, {"latents": latents})
    if changes is not None and not isinstance(changes, dict):
        raise ValueError(f"callback_on_step_end must return a dict (or None), got {type(changes).__name__}")
    return (changes or {}).get("latents", latents)


# ---------------------------------------------------------------------- the loop
def denoise(
    pipeline: DiffusionPipeline,
    batch_size: int,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None,
    latents: torch.Tensor | None,
    condition: dict[str, torch.Tensor],
    null_condition: dict[str, torch.Tensor] | None = None,
    guidance_scale: float = 1.0,
    image_codes: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    eta: float = 0.0,
    callback_on_step_end: StepCallback | None = None,
) -> torch.Tensor:
    """Key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` (another VAE's latents), denoised by ``pipeline``'s UNet with
    its scheduler.

    ``condition`` / ``null_condition``: the UNet's keyword inputs (``class_labels``, ``encoder_hidden_states``)
    with and without the condition, each of batch ``B``; guidance runs both in one batch of ``2B`` unless
    ``guidance_scale`` is 1. ``latents``: the initial noise (drawn from ``generator`` when None); with
    ``image_codes`` the noise added to them (image-to-image to ``strength``), and with ``mask`` the positions
    generated (inpainting; the others are the image's key codes).
    """
    unet, scheduler, vae = pipeline.unet, pipeline.scheduler, pipeline.vae
    device, dtype = pipeline._execution_device, unet.dtype
    noise = prepare_noise(vae, batch_size, generator, latents, device, dtype)
    timesteps = prepare_timesteps(scheduler, num_inference_steps, device,
                                  strength if image_codes is not None else None)
    x0 = None
    if image_codes is not None:
        x0 = to_diffusion_space(vae, image_codes.to(device=device, dtype=torch.float32)).to(dtype)
    latents = prepare_latents(scheduler, noise, timesteps, x0, strength, mask)
    guided = null_condition is not None and guidance_scale != 1
    inputs = guidance_inputs(condition, null_condition) if guided else condition
    step_kwargs = extra_step_kwargs(scheduler, generator, eta)

    for i, t in enumerate(pipeline.progress_bar(timesteps)):
        noise_pred = predict_noise(unet, scheduler, latents, t, inputs, guidance_scale if guided else None)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        if mask is not None:  # RePaint blending: the kept positions at the next timestep's noise level
            latents = torch.where(mask, latents, noised_image(scheduler, x0, noise, timesteps, i + 1))
        if callback_on_step_end is not None:
            latents = run_callback(callback_on_step_end, pipeline, i, t, latents)

    return final_key_codes(vae, latents, timesteps, image_codes, mask)


# ---------------------------------------------------------------------- after the loop
def final_key_codes(vae: torch.nn.Module, latents: torch.Tensor, timesteps: torch.Tensor,
                    image_codes: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """The key codes (in ``[0, 1]`` for BRICS) of the denoised ``latents``; when editing, the image's own key codes
    where nothing was denoised (strength 0) or kept (inpainting), exactly, not through the diffusion-space map."""
    key_codes = from_diffusion_space(vae, latents)
    if image_codes is not None:
        image_codes = image_codes.to(key_codes)
        if not len(timesteps):  # strength 0: the image's own key codes
            key_codes = image_codes.clone()
        elif mask is not None:
            key_codes = torch.where(mask, key_codes, image_codes)
    return key_codes


def to_output(pipeline: DiffusionPipeline, key_codes: torch.Tensor, output_type: str,
              return_dict: bool) -> ImagePipelineOutput | tuple:
    """The pipeline output of denoised key codes: decoded images (``[0, 1]``) as ``output_type`` asks, or the key
    codes (``"latent"``); the models' offload hooks are released."""
    if output_type == "latent":
        images = key_codes
    else:
        # no relaxed-precision noise, and the decoder's fixed noise inputs (where it has any), whatever the VAE's mode
        images = (decode_latents(pipeline.vae, key_codes) / 2 + 0.5).clamp(0, 1).float()
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = pipeline.numpy_to_pil(images)
    pipeline.maybe_free_model_hooks()
    return ImagePipelineOutput(images=images) if return_dict else (images,)
