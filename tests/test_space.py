"""The Space (space/app.py): each tab with a tiny pipeline, end to end in a headless Chromium, and the functions
behind the buttons called directly (text-to-image, class selection, editing).

The browser tests need gradio, playwright (pip) and Chromium (/usr/bin/chromium, Debian's `chromium`); the others
only gradio. All are marked ``browser`` (they need the ``demo`` extra): run with ``pytest -m browser``.
``BRICS_SPACE_SCREENSHOT=1`` also saves a screenshot after the Reconstruct tab ran to docs/images/space.png; with
``BRICS_MODEL`` set too, the app serves that model (e.g. the quickstart pipeline) and gets held-out emoji.
"""

import contextlib
import dataclasses
import importlib.util
import io
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # any one browser action or wait
SCREENSHOT = ROOT / "docs" / "images" / "space.png"

pytestmark = pytest.mark.browser


def screenshot_model() -> str | None:
    """The model to take the README's screenshot with (``BRICS_MODEL`` in screenshot mode), or None."""
    return os.environ.get("BRICS_MODEL") if os.environ.get("BRICS_SPACE_SCREENSHOT") == "1" else None


def emoji(path: Path, index: int) -> Path:
    """A held-out image of the embedded emoji set, as a PNG."""
    from diffusers_brics.evaluate import load_split
    from diffusers_brics.training.data import read_image

    split, column = load_split("held-out", 32)
    read_image(split[index][column]).convert("RGB").save(path)
    return path


def requirements() -> str | None:
    """Why the browser test cannot run here, or None."""
    for package in ("gradio", "playwright"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed (pip install -e '.[demo]')"
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def picture(path: Path, hue: int) -> Path:
    """A 48x40 PNG: a colour gradient with a disc (not square, so the app's crop is exercised)."""
    y, x = np.mgrid[0:40, 0:48]
    pixels = np.stack([x * 5, y * 6, np.full_like(x, hue)], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    ImageDraw.Draw(image).ellipse((14, 10, 34, 30), fill=(255, 255 - hue, 40))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The URL of the app serving a tiny BRICSPipeline, and the autoencoder's sizes."""
    reason = requirements()
    if reason:
        pytest.skip(reason)
    from builders import tiny_unet

    from diffusers_brics import BRICSAutoencoder
    from diffusers_brics.pipelines import BRICSPipeline, default_scheduler
    from diffusers_brics.pipelines.loading import load_model

    if screenshot_model():
        model = load_model(screenshot_model(), "cpu")
        vae = model.vae
        channels, size, _ = vae.latent_shape
    else:
        folder = tmp_path_factory.mktemp("space") / "pipeline"
        torch.manual_seed(0)
        vae = BRICSAutoencoder.from_preset("tiny").eval()
        channels, size, _ = vae.latent_shape
        unet = tiny_unet(channels, sample_size=size)
        BRICSPipeline(unet=unet, scheduler=default_scheduler(), vae=vae).save_pretrained(folder)
        model = dataclasses.replace(load_model(folder, "cpu"), source="tiny-untrained-pipeline")

    with serve(model) as url:
        yield {"url": url, "size": vae.config.sample_size, "channels": channels, "latent_size": size}


@contextlib.contextmanager
def serve(model):
    """The URL of the app serving ``model`` (a `LoadedModel`), closed afterwards."""
    app = load_app()
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, css=app.CSS, ssr_mode=False,
                quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(space):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                              timeout=TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url: str):
    """A page showing the app at ``url``, its tabs rendered. (Not "networkidle": an app with `gr.State` inputs keeps a
    heartbeat request open.)"""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Sample").wait_for(state="visible")
    return page


@pytest.fixture(scope="module")
def page(space, browser):
    page = open_page(browser, space["url"])
    yield page
    page.close()


def run(page, button: str, output: str) -> Image.Image:
    """Clicks ``#button`` and returns the picture ``#output`` then shows, fetched from its URL; where it showed one
    before, the test waits for another (a different picture: files are named by their content)."""
    image = page.locator(f"#{output} img")
    before = image.get_attribute("src") if image.count() else None
    page.click(f"#{button}")
    image.wait_for(state="visible")
    if before is not None:
        changed = "([selector, before]) => document.querySelector(selector)?.getAttribute('src') !== before"
        page.wait_for_function(changed, arg=[f"#{output} img", before], timeout=TIMEOUT_MS)
    return fetch(page, output)


def fetch(page, elem_id: str) -> Image.Image:
    """The picture the <img> in ``#elem_id`` shows, from its URL."""
    response = page.request.get(page.locator(f"#{elem_id} img").get_attribute("src"), timeout=TIMEOUT_MS)
    assert response.ok, response.status
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def check(image: Image.Image, size: tuple[int, int]):
    assert image.size == size
    assert np.asarray(image).std() > 0, "blank image"


def upload(page, elem_id: str, path: Path):
    page.locator(f"#{elem_id} input[type=file]").set_input_files(path)
    page.locator(f"#{elem_id} img").wait_for(state="visible")  # the preview: the upload finished


def set_number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_space_tabs(space, page, tmp_path):
    size, channels, latent_size = space["size"], space["channels"], space["latent_size"]
    first, second = picture(tmp_path / "first.png", 30), picture(tmp_path / "second.png", 220)
    if screenshot_model():
        first, second = emoji(tmp_path / "first.png", 3), emoji(tmp_path / "second.png", 11)

    upload(page, "reconstruct-input", first)
    check(run(page, "reconstruct-button", "reconstruct-output"), (size, size))
    codes = fetch(page, "reconstruct-codes")  # one grey tile per channel, 4x the key codes' side
    check(codes, (channels * 4 * latent_size, 4 * latent_size))
    psnr = float(page.locator("#reconstruct-psnr input").input_value())
    assert 0 < psnr < 100
    if os.environ.get("BRICS_SPACE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.get_by_role("tab", name="Sample").click()
    set_number(page, "sample-seed", 3)
    set_number(page, "sample-steps", 3)
    set_number(page, "sample-count", 2)
    page.locator("#sample-scheduler").get_by_role("radio", name="dpm", exact=True).check()
    check(run(page, "sample-button", "sample-output"), (2 * size, size))

    page.get_by_role("tab", name="Edit").click()
    page.click("#edit-button")  # nothing uploaded: a one-line error
    page.get_by_text("Upload an image to edit first.").first.wait_for(state="visible")
    upload(page, "edit-input", first)
    set_number(page, "edit-steps", 4)
    set_number(page, "edit-strength", 0.5)
    check(run(page, "edit-button", "edit-output"), (2 * size, size))  # image-to-image, two seeds
    if not screenshot_model():  # inpainting: a mask of the image's size (white: generated)
        upload(page, "edit-mask", half_mask(tmp_path / "mask.png", Image.open(first).size))
        set_number(page, "edit-count", 3)
        check(run(page, "edit-button", "edit-output"), (3 * size, size))

    page.get_by_role("tab", name="Interpolate").click()
    page.click("#interpolate-button")  # nothing uploaded: a one-line error
    page.get_by_text("Upload two images first.").first.wait_for(state="visible")
    upload(page, "interpolate-first", first)
    upload(page, "interpolate-second", second)
    set_number(page, "interpolate-steps", 4)
    check(run(page, "interpolate-button", "interpolate-output"), (4 * size, size))


def half_mask(path: Path, size: tuple[int, int]) -> Path:
    """A mask PNG of ``size`` (width, height): white (generated) on its right half, black (kept) on the left."""
    mask = np.zeros(size[::-1], dtype=np.uint8)
    mask[:, size[0] // 2:] = 255
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture(scope="module")
def text_space(space, tmp_path_factory):
    """The URL of the app serving a tiny (untrained) text-to-image pipeline, saved and loaded as a user's would be."""
    pytest.importorskip("diffusers_brics.models.text_encoder", reason="needs transformers (pip install -e '.[text]')")
    from builders import tiny_text_pipeline

    from diffusers_brics import BRICSAutoencoder
    from diffusers_brics.pipelines.loading import load_model

    folder = tmp_path_factory.mktemp("space-text") / "pipeline"
    torch.manual_seed(0)
    tiny_text_pipeline(BRICSAutoencoder.from_preset("tiny").eval()).save_pretrained(folder)
    model = dataclasses.replace(load_model(folder, "cpu"), source="tiny-untrained-text-pipeline")
    with serve(model) as url:
        yield url


def test_space_text_pipeline(text_space, browser, tmp_path):
    """A text-to-image pipeline: the Sample and Edit tabs take a prompt, a negative prompt and a guidance scale."""
    page = open_page(browser, text_space)
    try:
        page.get_by_role("tab", name="Sample").click()
        page.click("#sample-button")  # no prompt: a one-line error
        page.get_by_text("Write a prompt first.").first.wait_for(state="visible")
        page.locator("#sample-prompt textarea").fill("a red circle")
        page.locator("#sample-negative-prompt textarea").fill("a blue square")
        set_number(page, "sample-guidance", 2)
        set_number(page, "sample-steps", 3)
        set_number(page, "sample-count", 2)
        check(run(page, "sample-button", "sample-output"), (2 * 32, 32))

        page.get_by_role("tab", name="Edit").click()
        first = picture(tmp_path / "first.png", 30)
        upload(page, "edit-input", first)
        upload(page, "edit-mask", half_mask(tmp_path / "mask.png", Image.open(first).size))
        page.locator("#edit-prompt textarea").fill("a green triangle")
        set_number(page, "edit-steps", 3)
        check(run(page, "edit-button", "edit-output"), (2 * 32, 32))
    finally:
        page.close()


# ------------------------------------------------------------------ the functions behind the buttons, called directly
@pytest.fixture(scope="module")
def vae():
    from diffusers_brics import BRICSAutoencoder

    torch.manual_seed(0)
    return BRICSAutoencoder.from_preset("tiny").eval()


def gradio():
    """The gradio module; the test is skipped without it."""
    return pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")


def build(pipeline=None, vae=None, source="test"):
    """The app's demo for a pipeline (its vae as the autoencoder) or an autoencoder alone: ``(functions by api
    name, {elem_id: component props}, the markdown texts)``."""
    gradio()
    from diffusers_brics.pipelines.loading import LoadedModel

    if pipeline is not None:
        pipeline.set_progress_bar_config(disable=True)
    demo = load_app().build_demo(LoadedModel(getattr(pipeline, "vae", None) if vae is None else vae, pipeline, source))
    functions = {fn.api_name: fn.fn for fn in demo.fns.values()}
    components = demo.config["components"]
    by_id = {c["props"]["elem_id"]: c["props"] for c in components if c["props"].get("elem_id")}
    texts = [c["props"]["value"] for c in components if c["type"] == "markdown"]
    return functions, by_id, texts


def tiny_pipeline(vae):
    from builders import tiny_unet

    from diffusers_brics.pipelines import BRICSPipeline, default_scheduler

    return BRICSPipeline(unet=tiny_unet(vae.latent_shape[0]), scheduler=default_scheduler(), vae=vae)


def halves(row: Image.Image, count: int) -> list[np.ndarray]:
    """The ``count`` pictures of a row, as int16 arrays."""
    array = np.asarray(row.convert("RGB"), dtype=np.int16)
    return np.split(array, count, axis=1)


CONDITION = {"prompt": None, "negative_prompt": None, "guidance_scale": None, "class_label": None}


def test_space_text_sampling(vae):
    pytest.importorskip("diffusers_brics.models.text_encoder", reason="needs transformers (pip install -e '.[text]')")
    gr = gradio()
    from builders import tiny_text_pipeline

    functions, components, _ = build(tiny_text_pipeline(vae))
    assert {"sample-prompt", "sample-negative-prompt", "edit-prompt", "edit-negative-prompt"} <= set(components)
    assert components["sample-guidance"]["value"] == 3 and components["edit-guidance"]["value"] == 3
    assert "sample-class" not in components and "edit-class" not in components
    sample = functions["sample"]  # seed, steps, scheduler, count, prompt, negative prompt, guidance, class
    row = sample(2, 3, "ddim", 2, "a red circle", "", 3.0, None)
    assert row.size == (2 * 32, 32)
    assert np.array_equal(np.asarray(sample(2, 3, "ddim", 2, "a red circle", "", 3.0, None)), np.asarray(row))
    second = halves(sample(3, 3, "ddim", 1, "a red circle", "", 3.0, None), 1)[0]
    assert np.array_equal(second, halves(row, 2)[1])  # image i from seed + i
    others = [sample(2, 3, "ddim", 2, "a green triangle", "", 3.0, None),
              sample(2, 3, "ddim", 2, "a red circle", "a blue square", 3.0, None),
              sample(2, 3, "ddim", 2, "a red circle", "", 1.0, None)]
    assert all(not np.array_equal(np.asarray(other), np.asarray(row)) for other in others)
    with pytest.raises(gr.Error, match="Write a prompt first"):
        sample(0, 3, "ddim", 1, "  ", "", 3.0, None)


def test_space_class_pipeline_has_a_class_selector_and_guidance(vae):
    from builders import tiny_class_pipeline

    functions, components, _ = build(tiny_class_pipeline(vae))
    selector = components["sample-class"]
    assert [tuple(choice) for choice in selector["choices"]] == [("cat", 0), ("dog", 1)]  # not the null class
    assert selector["value"] == 0 and components["sample-guidance"]["value"] == 1
    assert "sample-prompt" not in components
    cat = functions["sample"](0, 3, "ddim", 1, None, None, 1.0, 0)
    assert not np.array_equal(np.asarray(functions["sample"](0, 3, "ddim", 1, None, None, 1.0, 1)), np.asarray(cat))
    assert not np.array_equal(np.asarray(functions["sample"](0, 3, "ddim", 1, None, None, 2.5, 0)), np.asarray(cat))


def test_space_unconditional_pipeline_has_no_conditioning_inputs(vae):
    _, components, _ = build(tiny_pipeline(vae))
    assert not {f"{tab}-{name}" for tab in ("sample", "edit") for name in ("prompt", "negative-prompt", "guidance",
                                                                           "class")} & set(components)
    assert {"edit-input", "edit-mask", "edit-strength", "edit-button", "edit-output"} <= set(components)


def test_space_edit(vae, tmp_path):
    gr = gradio()

    functions, _, _ = build(tiny_pipeline(vae))
    edit = functions["edit"]  # image, mask, strength, seed, steps, scheduler, count, then the conditioning
    image = Image.open(picture(tmp_path / "image.png", 30)).convert("RGB")  # 48x40: cropped to 32x32

    def run(mask=None, strength=0.8, seed=0, count=2, steps=4, scheduler="ddim"):
        return edit(image, mask, strength, seed, steps, scheduler, count, *CONDITION.values())

    reconstruction = np.asarray(functions["reconstruct"](image)[0], dtype=np.int16)
    for picture_ in halves(run(strength=0.0), 2):  # strength 0: the reconstruction, whatever the seed
        assert np.abs(picture_ - reconstruction).max() <= 1
    low, high = run(strength=0.3), run(strength=1.0)
    assert np.array_equal(np.asarray(run(strength=0.3)), np.asarray(low))  # seeded
    distance = [np.abs(halves(r, 2)[0] - reconstruction).mean() for r in (low, high)]
    assert distance[0] < distance[1]
    sample = functions["sample"](0, 4, "ddim", 2, *CONDITION.values())
    assert np.array_equal(np.asarray(high), np.asarray(sample))  # strength 1: the image ignored
    assert run(strength=0.5, scheduler="dpm", count=3).size == (3 * 32, 32)

    black = Image.new("L", image.size, 0)
    white = Image.new("L", image.size, 255)
    half = Image.open(half_mask(tmp_path / "mask.png", image.size))
    for picture_ in halves(run(mask=black, strength=1.0), 2):  # nothing generated: the reconstruction
        assert np.abs(picture_ - reconstruction).max() <= 1
    assert np.array_equal(np.asarray(run(mask=white, strength=1.0)), np.asarray(sample))  # all generated
    inpainted = np.asarray(run(mask=half, strength=1.0))
    assert not np.array_equal(inpainted, np.asarray(sample)) and not np.array_equal(inpainted, np.asarray(
        run(mask=black, strength=1.0)))

    with pytest.raises(gr.Error, match="Upload an image to edit first"):
        edit(None, None, 0.8, 0, 4, "ddim", 1, *CONDITION.values())
    with pytest.raises(gr.Error, match="mask_image: expected the size of its image, 48x40"):
        run(mask=Image.new("L", (32, 32), 255))
    with pytest.raises(gr.Error, match="The seed must be a whole number"):
        run(seed=-1)


def test_space_text_edit(vae, tmp_path):
    pytest.importorskip("diffusers_brics.models.text_encoder", reason="needs transformers (pip install -e '.[text]')")
    gr = gradio()
    from builders import tiny_text_pipeline

    functions, _, _ = build(tiny_text_pipeline(vae))
    image = Image.open(picture(tmp_path / "image.png", 30)).convert("RGB")
    half = Image.open(half_mask(tmp_path / "mask.png", image.size))
    edit = functions["edit"]
    red = edit(image, half, 1.0, 0, 3, "ddim", 2, "a red circle", "", 3.0, None)
    assert red.size == (2 * 32, 32)
    assert not np.array_equal(np.asarray(edit(image, half, 1.0, 0, 3, "ddim", 2, "a green triangle", "", 3.0, None)),
                              np.asarray(red))
    reconstruction = np.asarray(functions["reconstruct"](image)[0], dtype=np.int16)
    for picture_ in halves(edit(image, None, 0.0, 0, 3, "ddim", 2, "a red circle", "", 3.0, None), 2):
        assert np.abs(picture_ - reconstruction).max() <= 1
    with pytest.raises(gr.Error, match="Write a prompt first"):
        edit(image, None, 0.5, 0, 3, "ddim", 1, "", "", 3.0, None)


def test_space_pixel_pipeline_cannot_edit():
    """A pixel-space diffusers pipeline samples, but its Edit tab explains why it cannot edit."""
    from builders import plain_unet
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = plain_unet(3)
    functions, components, texts = build(DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)))
    assert set(functions) == {"sample"} and "edit-input" not in components
    assert any("cannot edit images" in text and "DDPMPipeline" in text for text in texts)
    assert functions["sample"](0, 2, "ddpm", 2, *CONDITION.values()).size == (2 * 8, 8)


def test_space_autoencoder_only(vae):
    """An autoencoder without a pipeline: the Sample and Edit tabs say why they cannot run, the others work."""
    functions, _, texts = build(vae=vae, source="ae")
    assert len(texts) == 3 and all("without a diffusion model" in text for text in texts[1:])
    assert set(functions) == {"reconstruct", "interpolate"}
