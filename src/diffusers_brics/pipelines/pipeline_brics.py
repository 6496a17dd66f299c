"""`BRICSPipeline`: unconditional (or class-conditional) image generation by diffusion on BRICS key codes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..models.autoencoder_brics import BRICSAutoencoder
from ..schedules import cosine_variant_betas

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def default_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The paper's default schedule (Chen 2023 cosine variant, start 0.2, end 1, tau 1.5), epsilon prediction."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        trained_betas=cosine_variant_betas(num_train_timesteps).tolist(),
        prediction_type="epsilon",
        clip_sample=False,
    )


def weight_variant(filename: str) -> str | None:
    """``"fp16"`` for ``diffusion_pytorch_model.fp16.safetensors`` (or its shards ``...fp16-00001-of-00002...``)."""
    parts = filename.rsplit("/", 1)[-1].split(".")
    return parts[1].split("-")[0] if len(parts) >= 3 else None


def files_to_download(files: list[str], components: list[str], variant: str | None = None,
                      use_safetensors: bool | None = None) -> list[str]:
    """The files of a repo that loading ``components`` needs: everything in their folders but unused weights.

    Per component, the weights of the requested ``variant`` (the plain ones when it has none, as diffusers falls
    back), in safetensors unless ``use_safetensors=False`` asks for ``.bin`` (either, when only one exists).
    """
    chosen = []
    for name in components:
        inside = [f for f in files if f.startswith(name + "/")]
        weights = [f for f in inside if f.endswith(WEIGHT_SUFFIXES)]
        chosen += [f for f in inside if f not in weights]
        wanted = [f for f in weights if weight_variant(f) == variant]
        if not wanted and variant is not None:
            wanted = [f for f in weights if weight_variant(f) is None]
        safetensors = [f for f in wanted if f.endswith(".safetensors")]
        pickled = [f for f in wanted if not f.endswith(".safetensors")]
        chosen += (pickled or safetensors) if use_safetensors is False else (safetensors or pickled)
    return chosen


class BRICSPipeline(DiffusionPipeline):
    r"""Generates images by denoising key codes with a `UNet2DModel` and decoding them with a `BRICSAutoencoder`.

    Components:
        unet (`UNet2DModel`): predicts the noise on key codes mapped to ``[-1, 1]`` by ``(z - 0.5) * 2``.
        scheduler (`SchedulerMixin`): any scheduler of the DDPM family (DDPM, DDIM, DPM-Solver, ...).
        vae (`BRICSAutoencoder`): decodes the denoised key codes (named like diffusers' VAEs, so that
            ``pipe.vae.enable_slicing()`` works).
        id2label (`dict[int, str]`, optional): class names of a class-conditional UNet, saved in
            ``model_index.json``; ``pipe.labels`` maps them back to ids, and ``class_labels`` accepts them.
    """

    model_cpu_offload_seq = "unet->vae"

    # id2label is dict[int, str], annotated as a plain dict: model_index.json gives it back with str keys, which
    # diffusers' type check on loading would warn about.
    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, vae: BRICSAutoencoder,
                 id2label: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        id2label = {int(i): str(name) for i, name in id2label.items()} if id2label else None  # JSON keys are str
        self.register_to_config(id2label=id2label)

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> class id, from ``id2label`` (empty without class names)."""
        return {name: i for i, name in (self.config.id2label or {}).items()}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "BRICSPipeline":
        """Load from a local folder or a Hub repo id.

        diffusers' own download step refuses components from pip packages (it only knows diffusers,
        transformers and the like), so for a repo id the files are fetched with ``huggingface_hub`` first and
        the folder is loaded from the local cache. Only ``model_index.json`` and the folders of the components it
        lists are downloaded (not training checkpoints or sample images kept in the same repo), and of their weights
        only those that ``variant`` and ``use_safetensors`` select. ``cache_dir``, ``revision``, ``token``,
        ``force_download`` and ``local_files_only`` are honoured, and so are ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and
        the usual proxy environment variables.
        """
        path = str(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

            download = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "token", "force_download",
                                                   "local_files_only") if k in kwargs}
            index_file = Path(hf_hub_download(path, "model_index.json", **download))
            index = json.loads(index_file.read_text())
            components = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
            if download.get("local_files_only") or constants.HF_HUB_OFFLINE:  # what the cached snapshot holds
                files = [f.relative_to(index_file.parent).as_posix() for f in index_file.parent.rglob("*") if f.is_file()]
            else:
                files = HfApi().list_repo_files(path, revision=download.get("revision"), token=download.get("token"))
            patterns = files_to_download(files, components, kwargs.get("variant"), kwargs.get("use_safetensors"))
            path = snapshot_download(path, allow_patterns=["model_index.json", *patterns], **download)
        pipeline = super().from_pretrained(path, **kwargs)
        if path != str(pretrained_model_name_or_path):  # record the repo id, as diffusers does
            pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    # ------------------------------------------------------------------ generation
    def check_inputs(self, batch_size: int, latents: torch.Tensor | None, generator, class_labels) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        shape = (batch_size, *self.vae.latent_shape)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (batch_size, C_z, H_z, W_z), got {tuple(latents.shape)}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"a list of generators must have batch_size ({batch_size}) entries, got {len(generator)}")
        conditional = self.unet.config.num_class_embeds is not None
        if conditional and class_labels is None:
            raise ValueError(f"this UNet is class-conditional ({self.unet.config.num_class_embeds} classes): pass class_labels")
        if not conditional and class_labels is not None:
            raise ValueError("class_labels were given but the UNet has no class embedding")

    def class_label_ids(self, class_labels: int | str | list | torch.Tensor, batch_size: int) -> torch.Tensor:
        """``(batch_size,)`` class ids from one label or one per image, given as ids or as names of ``pipe.labels``."""
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if not isinstance(class_labels, torch.Tensor):
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
        num_inference_steps: int = 1000,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: number of images.
            generator: a `torch.Generator` (or one per image) for reproducible sampling.
            num_inference_steps: denoising steps (fewer with DDIM or DPM-Solver schedulers).
            latents: initial noise ``(batch_size, C_z, H_z, W_z)``; drawn from ``generator`` when omitted.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, 3)`` in ``[0, 1]``), ``"pt"`` (``(B, 3, H, W)`` in
                ``[0, 1]``) or ``"latent"`` (the key codes in ``[0, 1]``).
            return_dict: return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict`` after every step; a
                returned ``"latents"`` replaces the current ones.
            class_labels: classes for a class-conditional UNet (one, or one per image), as ids or as names of
                ``pipe.labels``.
        """
        self.check_inputs(batch_size, latents, generator, class_labels)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        device, dtype = self._execution_device, self.unet.dtype
        shape = (batch_size, *self.vae.latent_shape)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        if class_labels is not None:
            class_labels = self.class_label_ids(class_labels, batch_size).to(device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            noise_pred = self.unet(model_input, t, class_labels=class_labels).sample
            latents = self.scheduler.step(noise_pred, t, latents, generator=generator).prev_sample
            if callback_on_step_end is not None:
                latents = callback_on_step_end(self, i, t, {"latents": latents}).get("latents", latents)

        key_codes = ((latents + 1) / 2).clamp(0, 1)  # diffusion space [-1, 1] -> key codes [0, 1]
        if output_type == "latent":
            images = key_codes
        else:
            images = self.vae.decode(key_codes.to(self.vae.dtype)).sample
            images = (images / 2 + 0.5).clamp(0, 1).float()
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
