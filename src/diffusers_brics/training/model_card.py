"""The model cards (``README.md``) the two stages write into their output folder, and upload with ``--push_to_hub``.

`write_autoencoder_card` (stage 1) and `write_pipeline_card` (stage 2) fill the one template the package ships,
``model_card.md`` beside this module, through `write_model_card`: Hub metadata (``library_name: diffusers``, license,
tags, ``datasets`` and ``base_model`` where they are Hub ids, a ``pipeline_tag`` for pipelines, a ``model-index``
with stage 1's held-out PSNR, SSIM and LPIPS), a summary and a picture, the code that loads and uses the model, the
results, and the run's settings. A card carries no local path: settings and data sources that are local paths are
reduced to their names (`local_name`).
"""

from __future__ import annotations

import os
from importlib.resources import as_file, files
from typing import Any

import torch
from diffusers import AutoencoderKL
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from ..models import adapters
from ..models.autoencoder_brics import BRICSAutoencoder
from .config import AutoencoderTrainingConfig, DataConfig, DiffusionTrainingConfig, flat_settings
from .hub import default_repo_id
from .latent_space import LatentSpace

TEMPLATE = "model_card.md"  # package data beside this module


def local_name(value: Any) -> Any:
    """``value`` without a local path: a string naming an existing file or folder, or an absolute path, becomes its
    last part (``/data/ffhq/`` -> ``ffhq``); anything else (a Hub id, a number, a flag) stays as it is."""
    if isinstance(value, str):
        path = os.path.expanduser(value)
        if os.path.isabs(path) or os.path.exists(path):
            return os.path.basename(os.path.normpath(path))
    return value


def hub_id(name: str | None) -> str | None:
    """``name`` if it names a Hub repository (a valid repo id that is not a local file or folder), else None."""
    if not name or os.path.exists(os.path.expanduser(name)):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def dataset_of(data: DataConfig) -> tuple[str, str]:
    """``(type, name)`` of the training images, for a card's model-index and text, without local paths: a Hub
    dataset is its id twice; otherwise the type is ``local`` (a dataset folder), ``imagefolder``
    (``--train_data_dir``) or ``noto-emoji`` (the embedded images) and the name says which folder."""
    if hub_id(data.dataset_name):
        return data.dataset_name, data.dataset_name
    if data.dataset_name:
        return "local", f"the local dataset '{local_name(data.dataset_name)}'"
    if data.train_data_dir:
        return "imagefolder", f"the image folder '{local_name(data.train_data_dir)}'"
    return "noto-emoji", data.describe()


def public_settings(settings: Any) -> list[tuple[str, str]]:
    """``(option, value)`` rows of a settings object for a model card: `flat_settings` (no secrets, no unset
    values) with local paths reduced to their names (`local_name`), Hub ids kept."""
    return [(key, str(local_name(value))) for key, value in flat_settings(settings).items()]


def write_model_card(output_dir: str, data: ModelCardData, *, title: str, summary: str, usage: list[dict[str, str]],
                     training: str, settings: list[tuple[str, str]], image: str | None = None,
                     results: list[tuple[str, str]] | None = None, results_note: str = "") -> str:
    """Write ``output_dir/README.md`` from the package's template; returns its path.

    Args:
        data: the card's metadata (``library_name``, ``license``, ``tags``, ``model-index``...).
        title, summary: the heading and the paragraph under it (markdown).
        usage: the ways to load and use the model, each ``{"text": markdown, "code": python}``.
        training: how the model was trained (markdown); ``settings``: the ``(option, value)`` table below it.
        image: a picture of the folder (samples, reconstructions) shown under the summary.
        results: ``(metric, value)`` rows, explained by ``results_note``.
    """
    with as_file(files("diffusers_brics") / "training" / TEMPLATE) as template:
        card = ModelCard.from_template(data, template_path=str(template), title=title, summary=summary, usage=usage,
                                       training=training, settings=settings, image=image, results=results or [],
                                       results_note=results_note)
    path = os.path.join(output_dir, "README.md")
    card.save(path)
    return path


def write_autoencoder_card(config: AutoencoderTrainingConfig, model: torch.nn.Module, step: int, seconds: float,
                           metrics: dict[str, float]) -> str:
    """Stage 1's card: how to load and use the autoencoder (saved in ``autoencoder/``), its held-out metrics (PSNR,
    SSIM and LPIPS also as the card's model-index), ``reconstructions.png`` and the run's settings."""
    c = config
    repo = default_repo_id(c.loop.output_dir, c.loop.hub_model_id)
    name, brics = type(model).__name__, isinstance(model, BRICSAutoencoder)
    channels, size, _ = adapters.latent_shape(model)
    resolution = model.config.sample_size
    dataset_type, dataset = dataset_of(c.data)
    data = ModelCardData(
        library_name="diffusers", license="apache-2.0",
        tags=["diffusers", "brics" if brics else name.lower(), "autoencoder"],
        datasets=[c.data.dataset_name] if hub_id(c.data.dataset_name) else None, model_name=repo.split("/")[-1],
        eval_results=[EvalResult(task_type="image-to-image", task_name="Image reconstruction",
                                 dataset_type=dataset_type, dataset_name=dataset, dataset_split="held-out",
                                 metric_type=key, metric_name=label, metric_value=round(metrics[key], 4))
                      for key, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS (AlexNet)"))],
    )
    if brics:
        package, encode, text = "diffusers_brics", "latents", "With diffusers-brics (`pip install diffusers-brics`):"
    else:
        package, text = "diffusers", "diffusers alone loads it:"
        encode = "latent_dist.mode()" if isinstance(model, AutoencoderKL) else "latents"
    code = (f"import torch\nfrom {package} import {name}\n\n"
            f'vae = {name}.from_pretrained("{repo}", subfolder="autoencoder")\n'
            f"images = torch.rand(1, 3, {resolution}, {resolution}) * 2 - 1  # images in [-1, 1]\n"
            f"latents = vae.encode(images).{encode}  # (1, {channels}, {size}, {size})"
            + (", key codes in [0, 1]" if brics else "") + "\nreconstructions = vae.decode(latents).sample")
    weights = "EMA weights" if c.loop.ema.use_ema else "the trained weights (no EMA)"
    noise = ("; reconstructions with the relaxed-precision and decoder noise, as the BRICS release measures them"
             if c.eval_with_noise and brics else "")
    return write_model_card(
        c.loop.output_dir, data,
        title=f"{'BRICS autoencoder' if brics else name} ({local_name(c.model_config_name_or_path) or c.preset})",
        summary=(f"A {name} for {resolution}x{resolution} images, trained with diffusers-brics on {dataset}: "
                 + (f"key codes {size}x{size}x{channels} in [0, 1] that retrieve features from multi-resolution "
                    "feature grids" if brics else f"latents {size}x{size}x{channels}")
                 + ". A latent diffusion model trains on its latents with `examples/train_brics_diffusion.py "
                 f"--autoencoder {repo} --autoencoder_subfolder autoencoder`. Below: held-out images over their "
                 "reconstructions."),
        image="reconstructions.png", usage=[{"text": text, "code": code}],
        results=[(key, f"{value:.4f}") for key, value in metrics.items()],
        results_note=f"On the held-out split, {weights}{noise}; LPIPS uses AlexNet.",
        training=(f"{step} steps of `examples/train_brics_ae.py` ({seconds:.0f} s); the run's settings (local "
                  "paths reduced to their names):"),
        settings=public_settings(c),
    )


def write_pipeline_card(config: DiffusionTrainingConfig, space: LatentSpace, step: int, seconds: float, *,
                        class_names: list[str] | None = None, text_encoder: torch.nn.Module | None = None,
                        prompt: str | None = None, guidance_scale: float = 1.0) -> str:
    """Stage 2's card: both ways to load the pipeline (this package's class, stock diffusers; a pixel-space
    `DDPMPipeline` by diffusers alone), the classes of a conditional UNet (``class_names``) or the text encoder of a
    text-to-image one (``text_encoder``, with a ``prompt`` for the usage code), ``samples.png`` and the run's
    settings. ``guidance_scale``: the one the usage code shows for a model trained with conditioning dropout."""
    c, names, text = config, class_names, text_encoder is not None
    repo, resolution = default_repo_id(c.loop.output_dir, c.loop.hub_model_id), space.resolution
    dataset = dataset_of(c.data)[1]
    guidance = f", guidance_scale={guidance_scale:g}" if c.conditioning_dropout_prob else ""
    if text:
        call = (f"images = pipe({prompt!r}, num_images_per_prompt=4, "
                f"num_inference_steps={c.num_inference_steps}{guidance}).images")
    else:
        call = (f"images = pipe(batch_size=4, num_inference_steps={c.num_inference_steps}"
                + (f", class_labels={names[:1]!r}{guidance}" if names else "") + ").images")
    if space.pixels:
        title, tags = "Pixel-space diffusion pipeline", ["diffusers", "ddpm", "pixel-space"]
        summary = (f"A stock diffusers `DDPMPipeline`: a UNet trained directly on the {resolution}x{resolution} "
                   f"images of {dataset} in [-1, 1] (pixel-space diffusion, no autoencoder), with the noise "
                   "schedule, loop and EMA of the latent diffusion training of diffusers-brics.")
        usage = [{"text": "diffusers alone loads it:", "code": "from diffusers import DiffusionPipeline\n\n"
                  f'pipe = DiffusionPipeline.from_pretrained("{repo}")\n{call}'}]
    else:
        channels, size, _ = space.shape
        vae = type(space.vae).__name__
        pipeline_class = "BRICSTextToImagePipeline" if text else "BRICSPipeline"
        kind = "text-to-image" if text else "latent diffusion"
        title, tags = f"{'BRICS' if vae == 'BRICSAutoencoder' else vae} {kind} pipeline", [
            "diffusers", "brics", "latent-diffusion"]
        codes = "key codes" if vae == "BRICSAutoencoder" else "latents"
        summary = (f"A `{pipeline_class}`: a UNet trained on the {codes} ({size}x{size}x{channels}) of {dataset}, "
                   f"decoded by a {vae} to {resolution}x{resolution} images.")
        if text:
            encoder = type(text_encoder).__name__
            summary += (f" It is conditioned on the `{c.caption_column}` captions through a {encoder} "
                        + ("trained with the UNet" if c.train_text_encoder else "(frozen)")
                        + (f" ({hub_id(c.text_encoder_name_or_path)})" if hub_id(c.text_encoder_name_or_path)
                           else "" if c.text_encoder_name_or_path else ", built from a config with a tokenizer "
                           "trained on the captions")
                        + f", with {c.conditioning_dropout_prob:g} conditioning dropout for classifier-free "
                        "guidance.")
        usage = [
            {"text": "With diffusers-brics (`pip install diffusers-brics`):",
             "code": f"from diffusers_brics import {pipeline_class}\n\n"
                     f'pipe = {pipeline_class}.from_pretrained("{repo}")\n{call}'},
            {"text": "With stock diffusers, which runs the repository's module files: they only import the classes "
                     "of the installed diffusers-brics package.",
             "code": "from diffusers import DiffusionPipeline\n\n"
                     f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)\n{call}'},
        ]
    if names:
        summary += f"\n\nClasses (`--class_column {c.class_column}`): " + ", ".join(names)
    data = ModelCardData(
        library_name="diffusers", license="apache-2.0",
        pipeline_tag="text-to-image" if text else "unconditional-image-generation",
        tags=tags + (["class-conditional"] if names else []) + (["text-to-image"] if text else []),
        datasets=[c.data.dataset_name] if hub_id(c.data.dataset_name) else None,
        base_model=None if space.pixels else hub_id(c.autoencoder),
    )
    return write_model_card(
        c.loop.output_dir, data, title=title, summary=summary, image="samples.png", usage=usage,
        training=(f"{step} steps of `examples/train_brics_diffusion.py` ({seconds:.0f} s), "
                  + ("EMA weights" if c.loop.ema.use_ema else "the trained weights (no EMA)")
                  + "; the run's settings (local paths reduced to their names):"),
        settings=public_settings(c),
    )
