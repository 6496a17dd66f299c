"""BRICS key codes in the browser: reconstruct an image, sample a pipeline, edit an image with it (image-to-image,
inpainting where a mask is drawn on the image or uploaded), interpolate between two images. The tabs that take
images offer held-out emoji as examples (`diffusers_brics.data.example_images`).

    BRICS_MODEL=outputs/quickstart/pipeline python space/app.py

``BRICS_MODEL`` is a local folder or a Hub repo id (a `BRICSPipeline`, a `BRICSTextToImagePipeline`, an
autoencoder, or a training output); without it the app serves the quickstart pipeline
(``outputs/quickstart/pipeline``, written by ``make demo``). A text-to-image pipeline gets prompt boxes and a guidance
slider; a class-conditional one a class selector (and a guidance slider where it has a null class).
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageChops

from diffusers_brics.data import example_images
from diffusers_brics.metrics import psnr
from diffusers_brics.pipelines import BRICSDiffusionPipeline, BRICSTextToImagePipeline
from diffusers_brics.pipelines.key_codes import interpolate_images, key_codes_to_image, reconstruct, to_pil
from diffusers_brics.pipelines.loading import SCHEDULERS, LoadedModel, load_model, swap_scheduler

DEFAULT_MODEL = "outputs/quickstart/pipeline"
MAX_IMAGES = 8
# small images, enlarged by the browser without blurring
CSS = ".picture img { image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%; }"
HEIGHT = 256
BRUSH = "#ff00ff"  # the colour the mask is drawn in (any paint counts): visible on the emoji's light grey


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


def is_text(pipe) -> bool:
    """Whether ``pipe`` draws from a prompt (a text-to-image pipeline)."""
    return isinstance(pipe, BRICSTextToImagePipeline)


def class_choices(pipe) -> list[tuple[str, int]] | None:
    """``(name, id)`` of each class of a class-conditional pipeline (its null class left out), or None."""
    if not isinstance(pipe, BRICSDiffusionPipeline) or is_text(pipe):
        return None
    classes = getattr(pipe.unet.config, "num_class_embeds", None)
    if classes is None:
        return None
    names = pipe.config.id2label or {}
    return [(names.get(i, str(i)), i) for i in range(classes) if i != pipe.config.null_class_id]


def guidance_default(pipe) -> float | None:
    """The guidance slider's start (the pipeline's own default), or None where the pipeline cannot guide."""
    if is_text(pipe):
        return 3.0
    if class_choices(pipe) and pipe.config.null_class_id is not None:
        return 1.0
    return None


def generate(pipe, schedule, seed, steps, scheduler, count, prompt=None, negative_prompt=None, guidance_scale=None,
             class_label=None, image=None, strength=None, mask=None) -> Image.Image:
    """A row of ``count`` images from ``pipe`` with ``scheduler`` (built from ``schedule``), image ``i`` from seed
    ``seed + i``; with ``image``, edits of it (image-to-image to ``strength``; inpainting where ``mask`` is white).
    ``prompt`` / ``negative_prompt`` / ``guidance_scale`` / ``class_label``: None where the pipeline has no use for
    them. A missing input or anything the pipeline refuses is a one-line `gr.Error`."""
    if seed is None or seed < 0:
        raise gr.Error("The seed must be a whole number >= 0.")
    count = int(count)
    if is_text(pipe):
        if not (prompt or "").strip():
            raise gr.Error("Write a prompt first.")
        kwargs = {"prompt": prompt, "num_images_per_prompt": count}
        if (negative_prompt or "").strip():
            kwargs["negative_prompt"] = negative_prompt
    else:
        kwargs = {"batch_size": count}
        if class_label is not None:
            kwargs["class_labels"] = int(class_label)
    if guidance_scale is not None:
        kwargs["guidance_scale"] = float(guidance_scale)
    if image is not None:
        kwargs["image"] = image
        if strength is not None:
            kwargs["strength"] = float(strength)
        if mask is not None:
            kwargs["mask_image"] = mask
    swap_scheduler(pipe, scheduler, schedule)
    generators = [torch.Generator().manual_seed(int(seed) + i) for i in range(count)]
    try:
        images = pipe(generator=generators, num_inference_steps=int(steps), **kwargs).images
    except ValueError as error:
        raise gr.Error(" ".join(str(error).split())) from None
    return row(images)


def image_size(vae) -> int:
    """The autoencoder's input size (its images' side), 32 where there is none."""
    return getattr(getattr(vae, "config", None), "sample_size", None) or 32


def example_paths(vae) -> list[str]:
    """The example images (held-out emoji) at the resolution nearest the autoencoder's input size (32 or 64)."""
    return [str(path) for path in example_images(64 if image_size(vae) >= 64 else 32)]


def editor_image(value: dict | None) -> Image.Image | None:
    """The image to edit from a `gr.ImageEditor` value (``{"background", "layers", "composite"}`` of PIL images): its
    background as RGB, transparency over white; None where no image was given."""
    if not value or value.get("background") is None:
        return None
    background = value["background"].convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", background.size, "white"), background).convert("RGB")


def drawn_mask(value: dict | None, size: tuple[int, int]) -> Image.Image | None:
    """The inpainting mask drawn in a `gr.ImageEditor` value: an ``L`` picture of ``size`` (width, height), white
    (generated) wherever a layer has paint (alpha > 0), black (kept) elsewhere; None where nothing is drawn."""
    alpha = None
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        channel = layer.convert("RGBA").getchannel("A")
        if channel.size != size:  # layers have the background's size; any other is stretched onto it
            channel = channel.resize(size, Image.Resampling.NEAREST)
        alpha = channel if alpha is None else ImageChops.lighter(alpha, channel)
    if alpha is None or alpha.getbbox() is None:
        return None
    return alpha.point(lambda value: 255 if value else 0)


def edit_mask(drawn: Image.Image | None, uploaded: Image.Image | None, size: tuple[int, int]) -> Image.Image | None:
    """The mask for an edit of an image of ``size``: the drawn one, the uploaded one, or both together (white in
    either is generated); None for image-to-image. An uploaded mask of another size is left for the pipeline to
    refuse, unless it is to be joined to a drawn one, which is a `gr.Error` here."""
    if drawn is None or uploaded is None:
        return drawn if uploaded is None else uploaded
    if uploaded.size != size:
        raise gr.Error(f"The uploaded mask is {uploaded.size[0]}x{uploaded.size[1]} but the image is {size[0]}x"
                       f"{size[1]} (width x height): upload a mask of the image's size, or only draw one.")
    return ImageChops.lighter(drawn, uploaded.convert("L"))


def input_image(label: str, elem_id: str, image_mode: str = "RGB") -> gr.Image:
    return gr.Image(label=label, type="pil", image_mode=image_mode, height=HEIGHT, elem_id=elem_id,
                    elem_classes="picture")


def output_image(label: str, elem_id: str) -> gr.Image:
    return gr.Image(label=label, type="pil", format="png", interactive=False, height=HEIGHT, elem_id=elem_id,
                    elem_classes="picture")


def cannot_edit(model: LoadedModel) -> str | None:
    """Why the model cannot edit images (no pipeline, or one that is not a BRICS pipeline), or None."""
    if reason := missing(model.require_pipeline):
        return reason
    if not isinstance(model.pipeline, BRICSDiffusionPipeline):
        return (f"This model cannot edit images: it is a {type(model.pipeline).__name__}, which only samples; editing "
                "needs a BRICS pipeline.")
    return None


def build_demo(model: LoadedModel) -> gr.Blocks:
    """The four tabs for ``model`` (tabs its parts cannot serve explain why instead)."""
    vae, pipe = model.vae, model.pipeline
    schedule = pipe.scheduler.config if pipe is not None else None
    examples = example_paths(vae)

    def reconstruct_image(image):
        if image is None:
            raise gr.Error("Upload an image first.")
        original, codes, recon = reconstruct(vae, [image])
        return to_pil(recon)[0], key_codes_to_image(codes[0]), round(float(psnr(recon, original)), 2)

    def sample(seed, steps, scheduler, count, prompt, negative_prompt, guidance_scale, class_label,
               progress=gr.Progress(track_tqdm=True)):
        return generate(pipe, schedule, seed, steps, scheduler, count, prompt, negative_prompt, guidance_scale,
                        class_label)

    def edit(editor, mask, strength, seed, steps, scheduler, count, prompt, negative_prompt, guidance_scale,
             class_label, progress=gr.Progress(track_tqdm=True)):
        image = editor_image(editor)
        if image is None:
            raise gr.Error("Upload an image to edit first.")
        mask = edit_mask(drawn_mask(editor, image.size), mask, image.size)
        return generate(pipe, schedule, seed, steps, scheduler, count, prompt, negative_prompt, guidance_scale,
                        class_label, image=image, strength=strength, mask=mask)

    def interpolate(first, second, steps):
        if first is None or second is None:
            raise gr.Error("Upload two images first.")
        return row(interpolate_images(vae, first, second, int(steps)))

    def sampling_settings(prefix: str, count: int) -> list:
        """Seed, steps, scheduler and image count (elem_ids ``{prefix}-seed`` ...)."""
        return [gr.Number(value=0, precision=0, minimum=0, label="Seed (image i uses seed + i)",
                          elem_id=f"{prefix}-seed"),
                gr.Slider(1, schedule.num_train_timesteps, value=50, step=1, label="Steps", elem_id=f"{prefix}-steps"),
                gr.Radio(list(SCHEDULERS), value="ddim", label="Scheduler", elem_id=f"{prefix}-scheduler"),
                gr.Slider(1, MAX_IMAGES, value=count, step=1, label="Images", elem_id=f"{prefix}-count")]

    def conditioning(prefix: str) -> list:
        """Prompt, negative prompt, guidance scale and class, as far as the pipeline takes them (a `gr.State` of None
        for the others): ``{prefix}-prompt``, ``{prefix}-negative-prompt``, ``{prefix}-guidance``,
        ``{prefix}-class``."""
        text, choices, guidance = is_text(pipe), class_choices(pipe), guidance_default(pipe)
        if not (text or choices):  # an unconditional pipeline: nothing to show
            return [gr.State(None) for _ in range(4)]
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=1, elem_id=f"{prefix}-prompt") if text else gr.State(None)
            negative = (gr.Textbox(label="Negative prompt (optional: what guidance steers away from)", lines=1,
                                   elem_id=f"{prefix}-negative-prompt") if text else gr.State(None))
            label = (gr.Dropdown(choices, value=choices[0][1], label="Class", elem_id=f"{prefix}-class")
                     if choices else gr.State(None))
            scale = (gr.Slider(0, 10, value=guidance, step=0.5, label="Guidance scale (1: none)",
                               elem_id=f"{prefix}-guidance") if guidance is not None else gr.State(None))
        return [prompt, negative, scale, label]

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
                gr.Examples([[path] for path in examples], image, label="Held-out emoji",
                            elem_id="reconstruct-examples", examples_per_page=len(examples))
        with gr.Tab("Sample"):
            if reason := missing(model.require_pipeline):
                gr.Markdown(reason)
            else:
                condition = conditioning("sample")
                with gr.Row():
                    settings = sampling_settings("sample", 4)
                button = gr.Button("Sample", variant="primary", elem_id="sample-button")
                grid = output_image("Samples", "sample-output")
                # one sampling (or editing) at a time: each swaps the pipeline's scheduler
                button.click(sample, settings + condition, grid, api_name="sample", concurrency_limit=1,
                             concurrency_id="pipeline")
        with gr.Tab("Edit"):
            if reason := cannot_edit(model):
                gr.Markdown(reason)
            else:
                gr.Markdown("Image-to-image: the image's key codes are noised to the strength (0: its reconstruction; "
                            "1: the image ignored) and denoised. Inpainting: paint over the image with the brush, or "
                            "upload a mask of the image's size (white: generated, black: kept); what is painted is "
                            "generated, the rest kept (strength 1 draws it afresh; lower keeps some of it).")
                with gr.Row():
                    source = gr.ImageEditor(
                        label="Image (paint where to inpaint)", type="pil", image_mode="RGBA",
                        sources=("upload", "clipboard"), transforms=(), layers=False, height=HEIGHT + 64,
                        brush=gr.Brush(default_size=max(2, image_size(vae) // 16), colors=[BRUSH], color_mode="fixed"),
                        elem_id="edit-input")
                    mask = input_image("Mask (optional): white = generate, black = keep", "edit-mask", "L")
                gr.Examples([[path] for path in examples], source, label="Held-out emoji", elem_id="edit-examples",
                            examples_per_page=len(examples))
                strength = gr.Slider(0, 1, value=0.8, step=0.05, label="Strength", elem_id="edit-strength")
                condition = conditioning("edit")
                with gr.Row():
                    settings = sampling_settings("edit", 2)
                button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                edits = output_image("Edits", "edit-output")
                button.click(edit, [source, mask, strength, *settings, *condition], edits, api_name="edit",
                             concurrency_limit=1, concurrency_id="pipeline")
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
                pairs = [examples[i:i + 2] for i in range(0, len(examples) - 1, 2)]
                gr.Examples(pairs, [first, second], label="Held-out emoji", elem_id="interpolate-examples")
    return demo


if __name__ == "__main__":
    demo = build_demo(load())
    demo.launch(css=CSS)
