"""`BRICSPipeline`: unconditional (or class-conditional) image generation by diffusion on BRICS key codes."""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel, VQModel
from diffusers import pipelines as diffusers_pipelines
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.peers import decode_latents, from_diffusion_space
from ..models.peers import latent_shape as latent_shape_of
from ..schedules import cosine_variant_betas
from ..utils import is_integer

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


class BRICSPipeline(DiffusionPipeline):
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

    A saved folder (or Hub repo) loads with ``BRICSPipeline.from_pretrained`` and with stock diffusers'
    ``DiffusionPipeline.from_pretrained(..., trust_remote_code=True)``: `save_pretrained` writes module files that
    only import the classes from the installed package (`remote_code_files`) and names them in
    ``model_index.json``; ``BRICSPipeline.from_pretrained`` resolves them without running them.
    """

    model_cpu_offload_seq = "unet->vae"

    # id2label is dict[int, str], annotated as a plain dict: model_index.json gives it back with str keys, which
    # diffusers' type check on loading would warn about.
    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, vae: BRICSAutoencoder | AutoencoderKL | VQModel,
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
        ``trust_remote_code=True``: ``pipeline_brics.py`` for the pipeline class and, per component whose class
        comes from outside diffusers (a `BRICSAutoencoder` vae), ``<component>/<module>.py``; each only imports
        its class from the installed package."""
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

    # ------------------------------------------------------------------ generation
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

    def check_inputs(
        self,
        batch_size: int,
        num_inference_steps: int,
        latents: torch.Tensor | None,
        generator: torch.Generator | list[torch.Generator] | None,
        class_labels: int | str | list[int | str] | torch.Tensor | None,
        output_type: str = "pil",
        eta: float = 0.0,
        callback_on_step_end: Callable | None = None,
    ) -> None:
        """Raise a ValueError naming the first argument of ``__call__`` (or component) that cannot work."""
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
        conditional = self.unet.config.num_class_embeds is not None
        if conditional and class_labels is None:
            raise ValueError(f"this UNet is class-conditional ({self.unet.config.num_class_embeds} classes): pass class_labels")
        if not conditional and class_labels is not None:
            raise ValueError("class_labels were given but the UNet has no class embedding")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not 0 <= eta < math.inf:
            raise ValueError(f"eta must be a non-negative number (0 for deterministic DDIM), got {eta!r}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")

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

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        latents: torch.Tensor | np.ndarray | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict | None] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        eta: float = 0.0,
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: number of images.
            generator: a `torch.Generator` (or one per image) for reproducible sampling.
            num_inference_steps: denoising steps, from 1 to the scheduler's ``num_train_timesteps`` (fewer with DDIM
                or DPM-Solver schedulers).
            latents: initial noise ``(batch_size, C_z, H_z, W_z)`` (a tensor or numpy array); drawn from
                ``generator`` when omitted.
            output_type: ``"pil"``, ``"np"`` (``(B, H, W, 3)`` in ``[0, 1]``), ``"pt"`` (``(B, 3, H, W)`` in
                ``[0, 1]``) or ``"latent"`` (the key codes in ``[0, 1]``).
            return_dict: return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end: ``fn(pipe, step, timestep, {"latents": ...}) -> dict | None`` after every
                scheduler step (second-order schedulers make two per timestep); a returned ``"latents"`` replaces
                the current ones.
            class_labels: classes for a class-conditional UNet (one, or one per image), as ids or as names of
                ``pipe.labels``.
            eta: the DDIM ``eta`` (0: deterministic, 1: DDPM-like noise); ignored by schedulers without it.
        """
        if isinstance(latents, np.ndarray):
            latents = torch.from_numpy(latents)
        self.check_inputs(batch_size, num_inference_steps, latents, generator, class_labels, output_type, eta,
                          callback_on_step_end)
        device, dtype = self._execution_device, self.unet.dtype
        if class_labels is not None:
            class_labels = self.class_label_ids(class_labels, batch_size).to(device)
        if latents is None:
            shape = (batch_size, *latent_shape_of(self.vae))
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            noise_pred = self.unet(model_input, t, class_labels=class_labels).sample
            latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                changes = callback_on_step_end(self, i, t, {"latents": latents})
                if changes is not None and not isinstance(changes, dict):
                    raise ValueError(f"callback_on_step_end must return a dict (or None), got {type(changes).__name__}")
                latents = (changes or {}).get("latents", latents)

        key_codes = from_diffusion_space(self.vae, latents)  # BRICS: key codes in [0, 1]
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
