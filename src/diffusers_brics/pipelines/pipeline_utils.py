"""What the BRICS pipelines share: saving and loading (local folders, Hub repos, stock diffusers with
``trust_remote_code``), and denoising key codes with classifier-free guidance, image-to-image and inpainting.

Vocabulary used by the pipelines:

* *classifier-free guidance* (Ho & Salimans 2022): the UNet predicts the noise with the condition and with a null
  condition (the empty prompt, or a learned null class), and the sampler follows
  ``uncond + guidance_scale * (cond - uncond)``; ``guidance_scale=1`` is the conditional model alone (one UNet pass).
* *image-to-image* (SDEdit, Meng et al. 2022): the image's key codes, noised to the timestep that ``strength`` picks
  (0: none, the image's reconstruction; 1: pure noise, the image ignored), then denoised.
* *inpainting* (RePaint-style blending, Lugmayr et al. 2022): a pixel mask (white: generate, black: keep) becomes a
  mask on the key-code grid (a position is generated when any pixel of its cell is masked); after every step the
  kept positions are replaced by the image's key codes noised to the next timestep, and at the end by the key codes
  themselves, so the kept key codes come back exactly.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers import pipelines as diffusers_pipelines
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ..models.peers import decode_latents, from_diffusion_space, to_diffusion_space
from ..models.peers import latent_shape as latent_shape_of
from ..schedules import cosine_variant_betas
from ..utils import is_integer
from .key_codes import encode_images, images_to_tensor, open_image, sample_size_of

ImageInput = Image.Image | str | os.PathLike | torch.Tensor | Sequence[Image.Image | str | os.PathLike]
MaskInput = Image.Image | str | os.PathLike | np.ndarray | torch.Tensor | Sequence[Image.Image | str | os.PathLike]
StepCallback = Callable[[DiffusionPipeline, int, torch.Tensor, dict], "dict | None"]


def count_images(image: ImageInput) -> int:
    """How many images ``image`` holds (a list's length, a 4-d tensor's batch, else 1)."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[0]) if image.ndim == 4 else 1
    return 1 if isinstance(image, (Image.Image, str, os.PathLike)) else len(image)

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


def is_external(module: str) -> bool:
    """Whether a ``model_index.json`` entry's module is outside the libraries stock diffusers loads classes from."""
    return module not in LOADABLE_CLASSES and not hasattr(diffusers_pipelines, module)


def module_file(module: str, class_name: str) -> tuple[str, str]:
    """``(name, source)`` of the module file that stands for ``module.class_name`` in a saved folder: named after
    the module's last part, its only statement imports the class from the installed package (from
    ``diffusers_brics`` itself where the package exports it, as ``BRICSPipeline`` and ``BRICSAutoencoder``)."""
    import diffusers_brics

    exported = getattr(diffusers_brics, class_name, None)
    package = "diffusers_brics" if getattr(exported, "__module__", None) == module else module
    source = (f"# `{class_name}` of the installed diffusers-brics package (pip install diffusers-brics), for\n"
              "# diffusers' `from_pretrained(..., trust_remote_code=True)`: this file only imports it.\n"
              f"from {package} import {class_name}  # noqa: F401\n")
    return module.rsplit(".", 1)[-1], source


def resolve_module_files(index: dict) -> dict:
    """``model_index.json`` as `BRICSPipeline` loads it, without running any file of the folder: the pipeline entry
    ``[module file, class]`` becomes the class name, and a component ``[module file, class]`` whose class the
    installed ``diffusers_brics`` exports becomes ``[the class's module, class]``. Entries of older saves (the
    pipeline by name, components by module path) and of diffusers' own classes come back unchanged."""
    import diffusers_brics

    resolved = dict(index)
    if isinstance(index.get("_class_name"), (list, tuple)):
        resolved["_class_name"] = index["_class_name"][1]
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            continue
        module, class_name = entry
        cls = getattr(diffusers_brics, class_name, None) if isinstance(class_name, str) else None
        if isinstance(module, str) and is_external(module) and isinstance(cls, type):
            resolved[name] = [cls.__module__, class_name]
    return resolved


class BRICSDiffusionPipeline(DiffusionPipeline):
    """The base of the BRICS pipelines (`BRICSPipeline`, `BRICSTextToImagePipeline`): a ``unet`` denoising the
    key codes of a ``vae`` (a `BRICSAutoencoder`, or diffusers' `AutoencoderKL` / `VQModel`) with a ``scheduler``.

    A saved folder (or Hub repo) loads with ``<Pipeline>.from_pretrained`` and with stock diffusers'
    ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``: `save_pretrained` writes module files that
    only import the classes from the installed package (`remote_code_files`) and names them in
    ``model_index.json``; ``from_pretrained`` of this package resolves them without running them.
    Generation (`denoise`) takes a condition for the UNet and, optionally, classifier-free guidance, an image to
    start from and a mask to inpaint (see the module docstring).
    """

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "BRICSDiffusionPipeline":
        """Load from a local folder or a Hub repo id.

        diffusers' own download step refuses components from pip packages (it only knows diffusers,
        transformers and the like), so for a repo id the files are fetched with ``huggingface_hub`` first and
        the folder is loaded from the local cache. Only ``model_index.json`` and the folders of the components it
        lists are downloaded (not training checkpoints or sample images kept in the same repo), and of their weights
        only those that ``variant`` and ``use_safetensors`` select. ``cache_dir``, ``revision``, ``token``,
        ``force_download`` and ``local_files_only`` are honoured, and so are ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and
        the usual proxy environment variables.

        Raises:
            FileNotFoundError: the argument is not a folder and cannot be a repo id (``"name"`` or ``"org/name"``),
                so it names a local folder that does not exist.
        """
        path = os.path.expanduser(str(pretrained_model_name_or_path))
        from_hub = not os.path.isdir(path)
        if from_hub:
            from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(path)
            except HFValidationError:
                raise FileNotFoundError(
                    f"pretrained_model_name_or_path {path!r} is not a folder (and not a Hub repo id, which has the "
                    f"form 'name' or 'org/name'); expected a folder holding model_index.json"
                ) from None
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
        if from_hub:  # record the repo id, as diffusers does
            pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return pipeline

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`, with the module files that `save_pretrained` writes resolved to the classes they
        import (`resolve_module_files`): `from_pretrained` then runs no file of the folder and needs no
        ``trust_remote_code``."""
        loaded = super().load_config(*args, **kwargs)
        if isinstance(loaded, tuple):
            return (resolve_module_files(loaded[0]), *loaded[1:])
        return resolve_module_files(loaded)

    def remote_code_files(self) -> dict[str, str]:
        """``{path in a saved folder: source}`` of the module files that let stock diffusers load the pipeline with
        ``trust_remote_code=True``: ``<module>.py`` for the pipeline class (``pipeline_brics.py`` for
        `BRICSPipeline`) and, per component whose class comes from outside diffusers (a `BRICSAutoencoder` vae),
        ``<component>/<module>.py``; each only imports its class from the installed package."""
        files = {}
        for name, (module, class_name) in self._remote_code_entries().items():
            stem, source = module_file(module, class_name)
            files[f"{stem}.py" if name == "_class_name" else f"{name}/{stem}.py"] = source
        return files

    def _remote_code_entries(self) -> dict[str, tuple[str, str]]:
        """``model_index.json`` key -> ``(module, class)`` of the classes that need a module file."""
        entries = {"_class_name": (type(self).__module__, type(self).__name__)}
        for name in self.components:
            module, class_name = self.config[name]
            if module is not None and is_external(module):
                entries[name] = (module, class_name)
        return entries

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        """Write ``model_index.json`` (`save_pretrained` and `save_config` call this) in the form stock diffusers
        loads with ``trust_remote_code=True``: ``"_class_name": ["pipeline_brics", "BRICSPipeline"]`` and
        ``"vae": ["autoencoder_brics", "BRICSAutoencoder"]`` for a BRICS vae, naming the module files of
        `remote_code_files`, which are written beside it."""
        folder = Path(json_file_path).parent
        for path, source in self.remote_code_files().items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(source, encoding="utf-8")
        index = json.loads(self.to_json_string())
        for name, (module, class_name) in self._remote_code_entries().items():
            index[name] = [module_file(module, class_name)[0], class_name]
        Path(json_file_path).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ checks shared by the pipelines
    def check_components(self) -> None:
        """Raise a ValueError unless the UNet's samples have the shape of the VAE's key codes."""
        config = self.unet.config
        size = config.sample_size
        size = (size, size) if is_integer(size) else None if size is None else tuple(size)
        latent_shape = latent_shape_of(self.vae)
        if config.in_channels != latent_shape[0] or config.out_channels != latent_shape[0] or (
            size is not None and size != latent_shape[1:]
        ):
            raise ValueError(
                f"the unet does not fit the vae: unet (in_channels, out_channels, sample_size) = "
                f"({config.in_channels}, {config.out_channels}, {size}), but the vae's key codes have "
                f"(C_z, H_z, W_z) = {latent_shape}; both channel counts must be C_z and sample_size (H_z, W_z)"
            )

    def check_sampling_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        latents: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        eta: float,
        callback_on_step_end: Callable | None,
        guidance_scale: float,
    ) -> None:
        """Raise a ValueError naming the first sampling argument (or component) that cannot work."""
        self.check_components()
        if not is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        steps_limit = self.scheduler.config.num_train_timesteps
        if not is_integer(num_inference_steps) or not 1 <= num_inference_steps <= steps_limit:
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {steps_limit}] (the scheduler's num_train_timesteps),"
                f" got {num_inference_steps!r}"
            )
        if latents is not None:
            shape = (batch_size, *latent_shape_of(self.vae))
            if not isinstance(latents, torch.Tensor):
                raise ValueError(f"latents must be a torch.Tensor (or numpy array) of shape {shape}, got "
                                 f"{type(latents).__name__}")
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"latents must have shape {shape} (batch_size, C_z, H_z, W_z), got {tuple(latents.shape)}"
                )
            if not bool(torch.isfinite(latents).all()):
                raise ValueError("latents must be finite, got NaN or infinite values")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"a list of generators must have batch_size ({batch_size}) entries, got {len(generator)}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not 0 <= eta < math.inf:
            raise ValueError(f"eta must be a non-negative number (0 for deterministic DDIM), got {eta!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        if not isinstance(guidance_scale, numbers.Real) or isinstance(guidance_scale, bool) or not (
            0 <= guidance_scale < math.inf
        ):
            raise ValueError(f"guidance_scale must be a number >= 0 (1: no guidance), got {guidance_scale!r}")

    # ------------------------------------------------------------------ image-to-image and inpainting inputs
    def prepare_image(self, image: ImageInput) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """``(pixels, sizes)``: the images as ``(N, 3, S, S)`` in ``[-1, 1]`` (resized and centre-cropped to the
        VAE's ``sample_size`` ``S``) and each one's ``(width, height)`` as given, which a mask must match.

        ``image``: a picture, an image file, a list of them, or a ``(N, 3, S, S)`` / ``(3, S, S)`` tensor in
        ``[-1, 1]``."""
        size = sample_size_of(self.vae)
        if isinstance(image, torch.Tensor):
            pixels = image[None] if image.ndim == 3 else image
            if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
                raise ValueError(f"image: expected a tensor of shape (N, 3, {size}, {size}) in [-1, 1] (this vae's "
                                 f"sample_size), got {tuple(image.shape)}; pass pictures to have them resized")
            if not pixels.is_floating_point() or not bool(torch.isfinite(pixels).all()):
                raise ValueError("image: expected a finite floating-point tensor in [-1, 1]")
            if float(pixels.min()) < -1 - 1e-3 or float(pixels.max()) > 1 + 1e-3:
                raise ValueError(f"image: expected values in [-1, 1], got [{float(pixels.min()):.3g}, "
                                 f"{float(pixels.max()):.3g}] (map [0, 1] images with x * 2 - 1)")
            return pixels.clamp(-1, 1), [(size, size)] * len(pixels)
        items = [image] if isinstance(image, (Image.Image, str, os.PathLike)) else list(image)
        if not items:
            raise ValueError("image: expected at least one image, got none")
        bad = [type(item).__name__ for item in items if not isinstance(item, (Image.Image, str, os.PathLike))]
        if bad:
            raise ValueError(f"image: expected PIL images, image files or a tensor, got {bad[0]}")
        pictures = [item.convert("RGB") if isinstance(item, Image.Image) else open_image(item, f"image[{i}]")
                    for i, item in enumerate(items)]
        return images_to_tensor(pictures, self.vae), [picture.size for picture in pictures]

    def prepare_mask(self, mask_image: MaskInput, sizes: list[tuple[int, int]]) -> torch.Tensor:
        """``(N, 1, H_z, W_z)`` bool, True where key codes are generated: the pixel mask (white or >= 0.5: generate)
        resized and cropped like its image, then a key-code position is generated when any pixel of its cell is.

        ``mask_image``: a picture or image file (any mode; its grey value counts), a ``(H, W)`` / ``(N, H, W)`` /
        ``(N, 1, H, W)`` array or tensor in ``[0, 1]``, or a list of pictures or files; one mask, or one per image,
        each of its image's size."""
        if isinstance(mask_image, (np.ndarray, torch.Tensor)):
            array = mask_image.detach().cpu().float().numpy() if isinstance(mask_image, torch.Tensor) else mask_image
            array = np.asarray(array, dtype=np.float32)
            if array.ndim == 4 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim == 2:
                array = array[None]
            if array.ndim != 3:
                raise ValueError(f"mask_image: expected shape (H, W), (N, H, W) or (N, 1, H, W), got "
                                 f"{tuple(mask_image.shape)}")
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
                raise ValueError("mask_image: expected finite values in [0, 1] (1: generate, 0: keep)")
            masks = [Image.fromarray((a * 255).round().astype(np.uint8), mode="L") for a in array]
        else:
            masks = [mask_image] if isinstance(mask_image, (Image.Image, str, os.PathLike)) else list(mask_image)
            bad = [type(m).__name__ for m in masks if not isinstance(m, (Image.Image, str, os.PathLike))]
            if bad or not masks:
                raise ValueError(f"mask_image: expected a PIL image, an image file, an array or a tensor, got "
                                 f"{bad[0] if bad else 'none'}")
            masks = [(m if isinstance(m, Image.Image) else open_image(m, f"mask_image[{i}]")).convert("L")
                     for i, m in enumerate(masks)]
        if len(masks) not in (1, len(sizes)):
            raise ValueError(f"mask_image: expected one mask or one per image ({len(sizes)}), got {len(masks)}")
        for i, mask in enumerate(masks):
            expected = sizes[i if len(masks) > 1 else 0]
            if len(masks) == 1 and len(set(sizes)) > 1:
                raise ValueError("mask_image: one mask for images of different sizes; pass one mask per image")
            if mask.size != expected:
                raise ValueError(f"mask_image: expected the size of its image, {expected[0]}x{expected[1]} (width x "
                                 f"height), got {mask.size[0]}x{mask.size[1]}")
        size = sample_size_of(self.vae)
        processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False, do_binarize=True,
                                      do_convert_grayscale=True, resample="nearest")
        pixels = processor.preprocess(masks, height=size, width=size, resize_mode="crop") > 0.5  # (N, 1, S, S)
        _, height, width = latent_shape_of(self.vae)
        cells = pixels.reshape(len(masks), 1, height, size // height, width, size // width)
        return cells.any(dim=5).any(dim=3)

    def check_editing_inputs(self, image, strength: float | None, mask_image) -> float | None:
        """``strength`` checked (default: 0.8 for image-to-image, 1 for inpainting); a ValueError for a strength or
        a mask without an image."""
        if image is None:
            if strength is not None:
                raise ValueError("strength applies to image-to-image: pass image= (or leave strength out)")
            if mask_image is not None:
                raise ValueError("mask_image needs the image to inpaint: pass image=")
            return None
        if strength is None:
            return 1.0 if mask_image is not None else 0.8
        if not isinstance(strength, numbers.Real) or isinstance(strength, bool) or not 0 <= strength <= 1:
            raise ValueError(f"strength must be a number in [0, 1] (0: the image's reconstruction, 1: the image "
                             f"ignored), got {strength!r}")
        return float(strength)

    def prepare_edit(self, image, mask_image, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(key_codes, mask)`` of the images to edit, repeated to ``batch_size`` (one image for all, or one per
        sample): the key codes ``(B, C_z, H_z, W_z)`` and, with ``mask_image``, the generated positions
        ``(B, 1, H_z, W_z)`` (see `prepare_mask`)."""
        pixels, sizes = self.prepare_image(image)
        if len(pixels) not in (1, batch_size):
            raise ValueError(f"image: expected one image or one per generated image ({batch_size}), got {len(pixels)}")
        codes = encode_images(self.vae, pixels.to(self._execution_device))
        codes = codes.expand(batch_size, *codes.shape[1:]) if len(codes) == 1 else codes
        mask = None
        if mask_image is not None:
            mask = self.prepare_mask(mask_image, sizes).to(codes.device)
            mask = mask.expand(batch_size, *mask.shape[1:]) if len(mask) == 1 else mask
        return codes, mask

    # ------------------------------------------------------------------ sampling
    def prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, eta: float
    ) -> dict[str, object]:
        """The ``generator`` and ``eta`` keywords of ``scheduler.step``, for the schedulers that take them."""
        accepted = inspect.signature(self.scheduler.step).parameters
        return {name: value for name, value in (("generator", generator), ("eta", eta)) if name in accepted}

    def decode_key_codes(self, key_codes: torch.Tensor) -> torch.Tensor:
        """Images (about ``[-1, 1]``) from key codes in ``[0, 1]`` (or another VAE's latents): no relaxed-precision
        noise, and the decoder's fixed noise inputs (where it has any), whatever the VAE's train/eval mode."""
        return decode_latents(self.vae, key_codes)

    def denoise(
        self,
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
        """Key codes ``(B, C_z, H_z, W_z)`` in ``[0, 1]`` (another VAE's latents), denoised by the UNet.

        ``condition`` / ``null_condition``: the UNet's keyword inputs (``class_labels``, ``encoder_hidden_states``)
        with and without the condition, each of batch ``B``; guidance runs both in one batch of ``2B`` unless
        ``guidance_scale`` is 1. ``latents``: the initial noise (drawn from ``generator`` when None); with
        ``image_codes`` the noise added to them (image-to-image to ``strength``), and with ``mask`` the positions
        generated (inpainting; the others are the image's key codes).
        """
        device, dtype = self._execution_device, self.unet.dtype
        shape = (batch_size, *latent_shape_of(self.vae))
        noise = (latents.to(device=device, dtype=dtype) if latents is not None
                 else randn_tensor(shape, generator=generator, device=device, dtype=dtype))
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        x0 = None
        if image_codes is not None:
            x0 = to_diffusion_space(self.vae, image_codes.to(device=device, dtype=torch.float32)).to(dtype)
            # SDEdit: the last `strength` of the schedule, as diffusers' image-to-image pipelines count it
            skipped = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            timesteps = timesteps[skipped * self.scheduler.order:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(skipped * self.scheduler.order)
        if x0 is None or strength == 1:
            latents = noise * self.scheduler.init_noise_sigma  # strength 1: the image's codes only where kept
        elif len(timesteps):
            latents = self.scheduler.add_noise(x0, noise, timesteps[:1].repeat(batch_size))
        else:
            latents = x0
        if mask is not None and len(timesteps):
            latents = torch.where(mask, latents, self.scheduler.add_noise(x0, noise, timesteps[:1].repeat(batch_size)))
        guided = null_condition is not None and guidance_scale != 1
        inputs = {name: torch.cat([null_condition[name], value]) for name, value in condition.items()} if guided \
            else condition
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
            noise_pred = self.unet(model_input, t, **inputs).sample
            if guided:
                unconditional, conditional = noise_pred.chunk(2)
                noise_pred = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if mask is not None:  # RePaint blending: the kept positions at the next timestep's noise level
                known = (self.scheduler.add_noise(x0, noise, timesteps[i + 1 : i + 2].repeat(batch_size))
                         if i + 1 < len(timesteps) else x0)
                latents = torch.where(mask, latents, known)
            if callback_on_step_end is not None:
                changes = callback_on_step_end(self, i, t, {"latents": latents})
                if changes is not None and not isinstance(changes, dict):
                    raise ValueError(f"callback_on_step_end must return a dict (or None), got {type(changes).__name__}")
                latents = (changes or {}).get("latents", latents)

        key_codes = from_diffusion_space(self.vae, latents)  # BRICS: key codes in [0, 1]
        if image_codes is not None:
            image_codes = image_codes.to(key_codes)
            if not len(timesteps):  # strength 0: the image's own key codes
                key_codes = image_codes.clone()
            elif mask is not None:  # the kept key codes exactly, not through the diffusion-space map
                key_codes = torch.where(mask, key_codes, image_codes)
        return key_codes

    def postprocess(self, key_codes: torch.Tensor, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
        """The pipeline output of denoised key codes: decoded images as ``output_type`` asks, or the key codes."""
        if output_type == "latent":
            images = key_codes
        else:
            images = (self.decode_key_codes(key_codes) / 2 + 0.5).clamp(0, 1).float()
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)
