"""BRICS key codes in the browser: reconstruct an image, sample a pipeline, interpolate between two images.

    BRICS_MODEL=outputs/quickstart/pipeline python space/app.py

``BRICS_MODEL`` is a local folder or a Hub repo id (a `BRICSPipeline`, an autoencoder, or a training output);
without it the app serves the quickstart pipeline (``outputs/quickstart/pipeline``, written by ``make demo``).
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from diffusers_brics.metrics import psnr
from diffusers_brics.pipelines.key_codes import interpolate_images, key_codes_to_image, reconstruct, tensor_to_pil
from diffusers_brics.pipelines.loading import SCHEDULERS, LoadedModel, load_model

DEFAULT_MODEL = "outputs/quickstart/pipeline"
MAX_IMAGES = 8
# small images, enlarged by the browser without blurring
CSS = ".picture img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }"
HEIGHT = 256


def model_reference() -> str:
    """``BRICS_MODEL``, or else the quickstart pipeline in the current directory or beside ``space/``."""
    if os.environ.get("BRICS_MODEL"):
        return os.environ["BRICS_MODEL"]
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / DEFAULT_MODEL).is_dir():
            return str(root / DEFAULT_MODEL)
    raise SystemExit(f"no model: {DEFAULT_MODEL} does not exist; run `make demo` to train it, or set BRICS_MODEL to "
                     "a model folder or Hub repo id")


def load() -> LoadedModel:
    """The model `model_reference` names, on the GPU if there is one; a bad reference exits with one line."""
    reference = model_reference()
    try:
        return load_model(reference, "cuda" if torch.cuda.is_available() else "cpu")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"BRICS_MODEL={reference}: {error}") from None


def missing(require) -> str | None:
    """Why the model lacks a part (`LoadedModel.require_vae` / `require_pipeline`), or None."""
    try:
        require()
    except ValueError as error:
        return f"This model cannot do this: {error}."
    return None


def row(images: list[Image.Image]) -> Image.Image:
    return make_image_grid(images, rows=1, cols=len(images))


def input_image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, type="pil", image_mode="RGB", height=HEIGHT, elem_id=elem_id, elem_classes="picture")


def output_image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=HEIGHT, elem_id=elem_id,
                    elem_classes="picture")


def build_demo(model: LoadedModel) -> gr.Blocks:
    """The three tabs for ``model`` (tabs its parts cannot serve explain why instead)."""
    vae, pipe = model.vae, model.pipeline
    schedule = pipe.scheduler.config if pipe is not None else None

    def reconstruct_image(image):
        if image is None:
            raise gr.Error("Upload an image first.")
        original, codes, recon = reconstruct(vae, [image])
        return tensor_to_pil(recon)[0], key_codes_to_image(codes[0]), round(float(psnr(recon, original)), 2)

    def sample(seed, steps, scheduler, count, progress=gr.Progress(track_tqdm=True)):
        if seed is None or seed < 0:
            raise gr.Error("The seed must be a whole number >= 0.")
        pipe.scheduler = SCHEDULERS[scheduler].from_config(schedule)
        generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(int(count))]
        try:
            images = pipe(batch_size=int(count), generator=generators, num_inference_steps=int(steps)).images
        except ValueError as error:
            raise gr.Error(str(error).splitlines()[0]) from None
        return row(images)

    def interpolate(first, second, steps):
        if first is None or second is None:
            raise gr.Error("Upload two images first.")
        return row(interpolate_images(vae, first, second, int(steps)))

    with gr.Blocks(title="BRICS key codes") as demo:
        gr.Markdown(f"# BRICS key codes\nModel: `{model.source}`. An image is encoded into key codes (a small grid "
                    "of values in [0, 1]); the decoder turns them back into pixels through multi-resolution "
                    "feature grids.")
        with gr.Tab("Reconstruct"):
            if reason := missing(model.require_vae):
                gr.Markdown(reason)
            else:
                with gr.Row():
                    image = input_image("Image", "reconstruct-input")
                    recon = output_image("Reconstruction", "reconstruct-output")
                    codes = output_image("Key codes (one tile per channel)", "reconstruct-codes")
                psnr_box = gr.Number(label="PSNR (dB)", interactive=False, elem_id="reconstruct-psnr")
                button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                button.click(reconstruct_image, image, [recon, codes, psnr_box], api_name="reconstruct")
        with gr.Tab("Sample"):
            if reason := missing(model.require_pipeline):
                gr.Markdown(reason)
            else:
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)",
                                     elem_id="sample-seed")
                    steps = gr.Slider(1, schedule.num_train_timesteps, value=50, step=1, label="Steps",
                                      elem_id="sample-steps")
                    scheduler = gr.Radio(list(SCHEDULERS), value="ddim", label="Scheduler", elem_id="sample-scheduler")
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="sample-count")
                button = gr.Button("Sample", variant="primary", elem_id="sample-button")
                grid = output_image("Samples", "sample-output")
                # one sampling at a time: each swaps the pipeline's scheduler
                button.click(sample, [seed, steps, scheduler, count], grid, api_name="sample", concurrency_limit=1)
        with gr.Tab("Interpolate"):
            if reason := missing(model.require_vae):
                gr.Markdown(reason)
            else:
                with gr.Row():
                    first = input_image("First image", "interpolate-first")
                    second = input_image("Second image", "interpolate-second")
                steps = gr.Slider(2, 16, value=8, step=1, label="Images in the row (ends included)",
                                  elem_id="interpolate-steps")
                button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
                strip = output_image("Decoded from interpolated key codes", "interpolate-output")
                button.click(interpolate, [first, second, steps], strip, api_name="interpolate")
    return demo


if __name__ == "__main__":
    demo = build_demo(load())
    demo.launch(css=CSS)
