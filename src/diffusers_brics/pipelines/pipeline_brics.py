"""`BRICSPipeline`: unconditional or class-conditional image generation by diffusion on BRICS key codes, with
classifier-free guidance for class-conditional UNets, image-to-image and inpainting."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel, VQModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.autoencoder_brics import BRICSAutoencoder
from ..utils import is_integer
from .base_pipeline import BRICSDiffusionPipeline
from .inputs import ImageInput, MaskInput, check_editing_inputs, check_sampling_inputs, count_images, prepare_edit
from .sampling import check_default_steps, denoise, inference_steps, to_output


class BRICSPipeline(BRICSDiffusionPipeline):
    r"""Generates images by denoising key codes with a `UNet2DModel` and decoding them with a `BRICSAutoencoder`.

    Components:
        unet (`UNet2DModel`): predicts the noise on key codes mapped to diffusion space by the VAE's
            ``(z - shift_factor) * scaling_factor`` (by default ``(z - 0.5) * 2``, onto ``[-1, 1]``).
        scheduler (`SchedulerMixin`): any scheduler of the DDPM family (DDPM, DDIM, DPM-Solver, ...).
        vae (`BRICSAutoencoder`): decodes the denoised key codes (named like diffusers' VAEs, so that
            ``pipe.vae.enable_slicing()`` works). diffusers' `AutoencoderKL` and `VQModel` work too: the UNet then
            denoises their latents, scaled by their ``scaling_factor`` (and shifted by ``shift_factor``, if set).
        id2label (`dict[int, str]`, optional): class names of a class-conditional UNet, saved in
            ``model_index.json``; ``pipe.labels`` maps them back to ids, and ``class_labels`` accepts them.
        null_class_id (`int`, optional): the class id a class-conditional UNet was trained with in place of the
            class (conditioning dropout), which classifier-free guidance (``guidance_scale``) needs.
        default_num_inference_steps (`int`, optional): the step count ``__call__`` runs when given none, saved in
            ``model_index.json`` (training records the one its samples used, with a DDIM scheduler).

    Saving and loading: see `BRICSDiffusionPipeline` (a local folder, a Hub repo id, or stock diffusers with
    ``trust_remote_code=True``).
    """

    model_cpu_offload_seq = "unet->vae"

    # id2label is dict[int, str], annotated as a plain dict: model_index.json gives it back with str keys, which
    # diffusers' type check on loading would warn about.
    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, vae: BRICSAutoencoder | AutoencoderKL | VQModel,
                 id2label: dict | None = None, null_class_id: int | None = None,
                 default_num_inference_steps: int | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        id2label = {int(i): str(name) for i, name in id2label.items()} if id2label else None  # JSON keys are str
        self.register_to_config(id2label=id2label, null_class_id=null_class_id,
                                default_num_inference_steps=check_default_steps(default_num_inference_steps))

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> class id, from ``id2label`` (empty without class names)."""
        return {name: i for i, name in (self.config.id2label or {}).items()}

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int | None,
        latents: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        class_labels: int | str | list[int | str] | torch.Tensor | None,
        output_type: str = "pil",
        eta: float = 0.0,
        callback_on_step_end: Callable | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        """Raise a ValueError naming the first argument of ``__call__`` (or component) that cannot work."""
        check_sampling_inputs(self, batch_size, num_inference_steps, latents, generator, output_type, eta,
                              callback_on_step_end, guidance_scale)
        conditional = self.unet.config.num_class_embeds is not None
        if conditional and class_labels is None:
            raise ValueError(f"this UNet is class-conditional ({self.unet.config.num_class_embeds} classes): pass "
                             "class_labels")
        if not conditional and class_labels is not None:
            raise ValueError("class_labels were given but the UNet has no class embedding")
        if guidance_scale != 1 and self.config.null_class_id is None:
            raise ValueError(
                f"guidance_scale {guidance_scale} needs a class-conditional UNet trained with a null class "
                "(stage 2 with --class_column and --conditioning_dropout_prob > 0, which saves null_class_id); this "
                "pipeline has none: use guidance_scale=1"
            )

    def class_label_ids(self, class_labels: int | str | list | torch.Tensor, batch_size: int) -> torch.Tensor:
        """``(batch_size,)`` class ids from one label or one per image, given as ids or as names of ``pipe.labels``."""
        if isinstance(class_labels, (numbers.Number, str)):
            class_labels = [class_labels]
        if isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
                raise ValueError(f"class_labels must be integer class ids or class names, got a {class_labels.dtype} "
                                 f"tensor")
        else:
            class_labels = list(class_labels)
            bad = [label for label in class_labels if not (is_integer(label) or isinstance(label, str))]
            if bad:
                raise ValueError(f"class_labels must be integer class ids or class names, got {bad}")
            unknown = [label for label in class_labels if isinstance(label, str) and label not in self.labels]
            if unknown:
                known = ", ".join(repr(name) for name in list(self.labels)[:10]) or "none: the pipeline has no id2label"
                raise ValueError(f"class_labels {unknown} are not class names of this pipeline (known: {known})")
            class_labels = [self.labels[label] if isinstance(label, str) else label for label in class_labels]
        ids = torch.as_tensor(class_labels).long().reshape(-1)
        if len(ids) not in (1, batch_size):
            raise ValueError(f"class_labels must give one label or batch_size ({batch_size}), got {len(ids)}")
        classes = self.unet.config.num_class_embeds
        if bool(((ids < 0) | (ids >= classes)).any()):
            raise ValueError(f"class_labels must lie in [0, {classes}) for this UNet, got {ids.tolist()}")
        return ids.expand(batch_size)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | np.ndarray | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict | None] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        image: ImageInput | None = None,
        strength: float | None = None,
        mask_image: MaskInput | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images, or edit ``image`` (image-to-image with ``strength``, inpainting with ``mask_image``).

        Args:
            batch_size: number of images (with several images to edit and ``batch_size`` 1: one per image).
            generator: a `torch.Generator` (or one per image) for reproducible sampling.
            num_inference_steps: denoising steps, from 1 to the scheduler's ``num_train_timesteps``; image-to-image
                runs the last ``strength`` of them. None: the pipeline's ``default_num_inference_steps`` (what
                training recorded with its DDIM scheduler), or for a pipeline saved without one the scheduler's
                default: ``num_train_timesteps`` for `DDPMScheduler` (its ancestral sampler over the training
                schedule), 50 for DDIM, DPM-Solver and the others (`scheduler_default_steps`).
            latents: initial noise ``(batch_size, C_z, H_z, W_z)`` (a tensor or numpy array); drawn from
                ``generator`` when omitted. With ``image``, the noise added to its key codes.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, 3)`` in ``[0, 1]``), ``"pt"`` (``(B, 3, H, W)`` in
                ``[0, 1]``) or ``"latent"`` (the key codes in ``[0, 1]``).
            return_dict: return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None`` after every
                scheduler step (second-order schedulers make two per timestep); a returned ``"latents"`` replaces
                the current ones.
            class_labels: classes for a class-conditional UNet (one, or one per image), as ids or as names of
                ``pipe.labels``.
            eta: the DDIM ``eta`` (0: deterministic, 1: DDPM-like noise); ignored by schedulers without it.
            guidance_scale: classifier-free guidance towards ``class_labels`` (1: none; needs ``null_class_id``).
            image: the image(s) to edit: pictures, image files, or a ``(N, 3, S, S)`` tensor in ``[-1, 1]``; one
                for the whole batch, or one per generated image.
            strength: how much of ``image`` is noised away, in ``[0, 1]`` (0: its reconstruction; 1: ignored where
                generated); default 0.8, or 1 with ``mask_image``.
            mask_image: where to generate (white, or >= 0.5) and where to keep ``image`` (black), in pixels of the
                image's own size: a picture, an array or a tensor; the kept key codes come back exactly.
        """
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(latents)
        num_inference_steps = inference_steps(self, num_inference_steps)
        strength = check_editing_inputs(image, strength, mask_image)
        if image is not None and batch_size == 1:
            batch_size = count_images(image)  # several images to edit: one sample each
        self.check_inputs(batch_size, num_inference_steps, latents, generator, class_labels, output_type, eta,
                          callback_on_step_end, guidance_scale)
        device = self._execution_device
        condition, null_condition = {}, None
        if class_labels is not None:
            condition = {"class_labels": self.class_label_ids(class_labels, batch_size).to(device)}
            if self.config.null_class_id is not None:
                null_condition = {"class_labels": torch.full_like(condition["class_labels"], self.config.null_class_id)}
        image_codes, mask = prepare_edit(self, image, mask_image, batch_size) if image is not None else (None, None)
        key_codes = denoise(self, batch_size, num_inference_steps, generator, latents, condition, null_condition,
                            guidance_scale, image_codes, strength, mask, eta, callback_on_step_end)
        return to_output(self, key_codes, output_type, return_dict)
