"""Loading "a model" from whatever a user points at: a pipeline, an autoencoder, or a training output.

`load_model` accepts, each as a local folder or a Hub repo id:

* a pipeline (``model_index.json``): a `BRICSPipeline`, a `BRICSTextToImagePipeline` or any diffusers pipeline
  (e.g. a pixel-space `DDPMPipeline`), its VAE (if any) as the autoencoder;
* an autoencoder (``config.json`` of a `BRICSAutoencoder`, `AutoencoderKL` or `VQModel`);
* a stage-1 output folder (the autoencoder in ``autoencoder/``) or a quickstart output folder (the pipeline in
  ``pipeline/``).

Anything else is refused with one line naming what was looked for.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler

from ..models.autoencoder_brics import BRICSAutoencoder
from ..models.adapters import load_autoencoder
from .pipeline_brics import BRICSPipeline
from .pipeline_brics_text2img import BRICSTextToImagePipeline

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}

# The pipelines of this package, by the class name in model_index.json: they load with their own from_pretrained
# (which resolves the module files save_pretrained writes, with no trust_remote_code).
BRICS_PIPELINES = {cls.__name__: cls for cls in (BRICSPipeline, BRICSTextToImagePipeline)}

# (file that marks it, subfolder it lives in): a pipeline first, then an autoencoder, then training outputs.
_LAYOUTS = (("model_index.json", None), ("config.json", None), ("model_index.json", "pipeline"),
            ("config.json", "autoencoder"))


@dataclass
class LoadedModel:
    """What `load_model` found: an autoencoder and, for a pipeline, the pipeline (whose ``vae`` it is)."""

    vae: torch.nn.Module | None
    pipeline: DiffusionPipeline | None
    source: str

    def require_vae(self) -> torch.nn.Module:
        """The autoencoder; a pipeline without one (pixel space) raises a ValueError."""
        if self.vae is None:
            raise ValueError(f"model {self.source!r} has no autoencoder (a pixel-space pipeline): it can sample, but "
                             "not encode, decode or interpolate key codes")
        return self.vae

    def require_pipeline(self) -> DiffusionPipeline:
        """The pipeline; an autoencoder alone raises a ValueError."""
        if self.pipeline is None:
            raise ValueError(f"model {self.source!r} is an autoencoder without a diffusion model: train one with "
                             "`brics train-diffusion --autoencoder ...` (or pass a pipeline) to sample")
        return self.pipeline


def _has_file(name_or_path: str, filename: str, subfolder: str | None) -> bool:
    """Whether the local folder, or else the Hub repo, holds ``subfolder/filename``."""
    relative = f"{subfolder}/{filename}" if subfolder else filename
    if os.path.isdir(name_or_path):
        return os.path.isfile(os.path.join(name_or_path, relative))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        hf_hub_download(name_or_path, relative)
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: first
        raise FileNotFoundError(f"model {name_or_path!r}: no such folder, and the Hub cannot be reached (offline, "
                                "or HF_HUB_OFFLINE=1) with no cached copy of it") from None
    except EntryNotFoundError:
        return False
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"model {name_or_path!r}: no such folder, and no Hub repo of that name (or it is "
                                "private: log in with `hf auth login`)") from None
    return True


def _check_reference(name_or_path: str) -> str:
    """``name_or_path`` expanded; a string that is neither a folder nor a possible repo id raises a
    FileNotFoundError."""
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        raise FileNotFoundError(f"model {path!r}: no such folder (and not a Hub repo id 'org/name')") from None
    if os.path.exists(path):
        raise FileNotFoundError(f"model {path!r} is a file; expected a model folder or a Hub repo id")
    return path


def key_code_bound(vae: torch.nn.Module | None) -> float | None:
    """The largest magnitude of a BRICS autoencoder's key codes in diffusion space (key codes lie in ``[0, 1]``, so
    ``max(shift, 1 - shift) * scaling_factor``: 1 by default); None for other autoencoders, whose latents have no
    bound."""
    if not isinstance(vae, BRICSAutoencoder):
        return None
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return max(abs(shift), abs(1 - shift)) * vae.config.scaling_factor


def swap_scheduler(pipeline: DiffusionPipeline, scheduler: str, config: dict | None = None) -> DiffusionPipeline:
    """Give ``pipeline`` a ``"ddpm"``, ``"ddim"`` or ``"dpm"`` (DPM-Solver++) scheduler built from ``config`` (by
    default its current scheduler's: same noise schedule and prediction type); returns the pipeline.

    For BRICS key codes the scheduler's estimate of the clean sample is kept within their range in diffusion space
    (`key_code_bound`): ``clip_sample`` for DDPM and DDIM, static thresholding for DPM-Solver++ at the default
    bound 1. The paper's cosine-variant schedule ends at a cumulative alpha of about 0, so DDIM's first steps divide
    by its square root (about 250 at step 980 of 1000) and, unclipped, diverge to saturated key codes on many seeds.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")
    cls = SCHEDULERS[scheduler]
    options = inspect.signature(cls.__init__).parameters
    bound, overrides = key_code_bound(getattr(pipeline, "vae", None)), {}
    if bound is not None and "clip_sample" in options:
        overrides = {"clip_sample": True, "clip_sample_range": bound}
    elif bound == 1 and "thresholding" in options:  # clamps to [-s, s] and divides by s, with s = 1 here
        overrides = {"thresholding": True, "sample_max_value": 1.0}
    pipeline.scheduler = cls.from_config(config if config is not None else pipeline.scheduler.config, **overrides)
    return pipeline


def load_pipeline(name_or_path: str, scheduler: str | None = None, device: str | torch.device = "cpu"
                  ) -> DiffusionPipeline:
    """A `BRICSPipeline`, a `BRICSTextToImagePipeline` or any diffusers pipeline (read from ``model_index.json``) on
    ``device``, with ``scheduler`` swapped in (see `swap_scheduler`)."""
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")
    try:
        index = DiffusionPipeline.load_config(name_or_path)
    except OSError as error:
        raise FileNotFoundError(f"pipeline {name_or_path!r}: no model_index.json, neither in a local folder nor in a "
                                f"Hub repo ({error})") from error
    class_name = index.get("_class_name")
    if isinstance(class_name, (list, tuple)):  # ["pipeline_brics", "BRICSPipeline"]: a module file and the class
        class_name = class_name[-1]
    cls = BRICS_PIPELINES.get(class_name, DiffusionPipeline)
    pipeline = cls.from_pretrained(name_or_path).to(device)
    return swap_scheduler(pipeline, scheduler) if scheduler is not None else pipeline


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """The pipeline and/or autoencoder at ``name_or_path`` (see the module docstring for what is accepted), in
    eval mode on ``device``."""
    path = _check_reference(name_or_path)
    for marker, subfolder in _LAYOUTS:
        if not _has_file(path, marker, subfolder):
            continue
        if marker == "model_index.json":
            location = os.path.join(path, subfolder) if subfolder and os.path.isdir(path) else path
            if subfolder and not os.path.isdir(path):
                raise ValueError(f"model {path!r}: the pipeline is in the repo's {subfolder}/ folder; upload that "
                                 "folder as its own repo to load it by id")
            pipeline = load_pipeline(location, device=device)
            vae = getattr(pipeline, "vae", None)
            return LoadedModel(vae.eval() if vae is not None else None, pipeline, str(name_or_path))
        try:
            vae = load_autoencoder(path, subfolder=subfolder)
        except ValueError as error:
            raise ValueError(f"model {path!r} is not a BRICS model: {error}") from None
        return LoadedModel(vae.to(device).eval(), None, str(name_or_path))
    raise ValueError(f"model {path!r} is not a BRICS model: found neither a pipeline (model_index.json) nor an "
                     "autoencoder (config.json), nor a training output holding one in autoencoder/ or pipeline/")
