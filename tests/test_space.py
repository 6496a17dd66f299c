"""The Space (space/app.py): each tab with a tiny pipeline, end to end in a headless Chromium, and the functions
behind the buttons called directly (text-to-image, class selection, editing).

The browser tests need gradio, playwright (pip) and Chromium (/usr/bin/chromium, Debian's `chromium`); the others
only gradio. All are marked ``browser`` (they need the ``demo`` extra): run with ``pytest -m browser``.
``BRICS_SPACE_SCREENSHOT=1`` also saves a screenshot after the Reconstruct tab ran to docs/images/space.png, and one
of the Edit tab with a mask drawn and its inpainted result to docs/images/space-edit.png; with ``BRICS_MODEL`` set
too, the app serves that model (e.g. the quickstart pipeline) and gets held-out emoji:

    BRICS_SPACE_SCREENSHOT=1 BRICS_MODEL=outputs/quickstart/pipeline pytest -m browser tests/test_space.py -k tabs
"""

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import free_port, tiny_pipeline
from PIL import Image, ImageDraw

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # any one browser action or wait (sampling on a busy 2-core machine can take tens of seconds)
SCREENSHOT = ROOT / "docs" / "images" / "space.png"
EDIT_SCREENSHOT = ROOT / "docs" / "images" / "space-edit.png"

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
    from diffusers_brics.pipelines.loading import load_model

    if screenshot_model():
        model = load_model(screenshot_model(), "cpu")
        vae = model.vae
        channels, size, _ = vae.latent_shape
    else:
        folder = tmp_path_factory.mktemp("space") / "pipeline"
        pipeline = tiny_pipeline()  # the tiny autoencoder's 8x8 key codes, a UNet of that size
        vae = pipeline.vae
        channels, size, _ = vae.latent_shape
        pipeline.save_pretrained(folder)
        model = dataclasses.replace(load_model(folder, "cpu"), source="tiny-untrained-pipeline")

    with serve(model) as (url, app):
        yield {"url": url, "app": app, "size": vae.config.sample_size, "channels": channels, "latent_size": size}


@contextlib.contextmanager
def serve(model):
    """``(URL, the app's module)`` of the app serving ``model`` (a `LoadedModel`) in this process, closed
    afterwards."""
    app = load_app()
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, css=app.CSS, ssr_mode=False,
                quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", app
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


def press(page, button: str, output: str) -> Image.Image:
    """Clicks ``#button`` and returns the picture ``#output`` then shows, fetched from its URL; where it showed one
    before, the test waits for another (a different picture: files are named by their content)."""
    image = page.locator(f"#{output} img")
    before = image.get_attribute("src") if image.count() else None
    page.click(f"#{button}")
    image.wait_for(state="visible")
    if before is not None:
        changed = "([selector, before]) => document.querySelector(selector)?.getAttribute('src') !== before"
        page.wait_for_function(changed, arg=[f"#{output} img", before], timeout=TIMEOUT_MS)
    shown = "(selector) => { const img = document.querySelector(selector); return img?.complete && img.naturalWidth > 0; }"
    page.wait_for_function(shown, arg=f"#{output} img", timeout=TIMEOUT_MS)  # loaded, as a screenshot shows it
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


def upload_to_editor(page, elem_id: str, path: Path):
    """Uploads ``path`` as the image of the `gr.ImageEditor` ``#elem_id``."""
    page.locator(f"#{elem_id} input[type=file]").first.set_input_files(path)
    wait_for_editor(page, elem_id)


def set_number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_space_tabs(space, page, tmp_path, monkeypatch):
    size, channels, latent_size = space["size"], space["channels"], space["latent_size"]
    first, second = picture(tmp_path / "first.png", 30), picture(tmp_path / "second.png", 220)
    if screenshot_model():
        first, second = emoji(tmp_path / "first.png", 3), emoji(tmp_path / "second.png", 11)
    app = space["app"]
    masks = []  # each mask the Edit button's handler made of the drawing and the upload (None: none)
    original = app.edit_mask
    monkeypatch.setattr(app, "edit_mask", lambda *args: masks.append(original(*args)) or masks[-1])

    upload(page, "reconstruct-input", first)
    check(press(page, "reconstruct-button", "reconstruct-output"), (size, size))
    codes = fetch(page, "reconstruct-codes")  # one grey tile per channel, 4x the key codes' side
    check(codes, (channels * 4 * latent_size, 4 * latent_size))
    psnr = float(page.locator("#reconstruct-psnr input").input_value())
    assert 0 < psnr < 100
    if os.environ.get("BRICS_SPACE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    example(page, "reconstruct-examples", 0)  # a held-out emoji, 32x32
    page.locator("#reconstruct-input img").wait_for(state="visible")
    reconstruction = np.asarray(press(page, "reconstruct-button", "reconstruct-output"), dtype=np.int16)
    assert reconstruction.shape == (size, size, 3)

    page.get_by_role("tab", name="Sample").click()
    set_number(page, "sample-seed", 3)
    set_number(page, "sample-steps", 3)
    set_number(page, "sample-count", 2)
    page.locator("#sample-scheduler").get_by_role("radio", name="dpm", exact=True).check()
    check(press(page, "sample-button", "sample-output"), (2 * size, size))

    page.get_by_role("tab", name="Edit").click()
    page.click("#edit-button")  # nothing uploaded: a one-line error
    error_shown(page, "Upload an image to edit first.")
    example(page, "edit-examples", 0)  # the emoji reconstructed above, as the editor's background
    wait_for_editor(page, "edit-input")
    set_number(page, "edit-steps", 4)
    set_number(page, "edit-strength", 0.5)
    check(press(page, "edit-button", "edit-output"), (2 * size, size))  # image-to-image, two seeds
    assert masks == [None]

    # inpainting where the mouse paints: a stroke down the left of the 32x32 emoji (the brush's radius is 2)
    draw(page, "edit-input", [(7, 6), (7, 16), (7, 26)], (32, 32))
    set_number(page, "edit-strength", 1)
    count = 4 if screenshot_model() else 2
    set_number(page, "edit-count", count)
    if screenshot_model():
        set_number(page, "edit-steps", 25)
    edits = press(page, "edit-button", "edit-output")
    check(edits, (count * size, size))
    assert masks[-1] is not None, "the drawn mask did not reach the handler"
    mask = np.asarray(masks[-1]) > 0  # (32, 32): what reached the pipeline
    assert mask[6:27, 7].all() and not mask[:, 16:].any() and not mask[:3].any() and not mask[30:].any()
    for edited in halves(edits, count):
        far = np.abs(edited - reconstruction)[:, 20:]  # away from the stroke: kept
        assert far.max() <= 16, far.max()
        if screenshot_model():  # a trained model redraws the painted part
            assert np.abs(edited - reconstruction)[6:27, 4:11].max() > 48
    if os.environ.get("BRICS_SPACE_SCREENSHOT") == "1":
        page.wait_for_timeout(500)  # the new picture painted
        page.screenshot(path=str(EDIT_SCREENSHOT), full_page=True)

    if not screenshot_model():  # and a mask uploaded as well (white: generated): the two together
        upload(page, "edit-mask", half_mask(tmp_path / "mask.png", (32, 32)))
        set_number(page, "edit-count", 3)
        check(press(page, "edit-button", "edit-output"), (3 * size, size))
        both = np.asarray(masks[-1]) > 0
        assert both[:, 16:].all() and both[6:27, 7].all() and not both[:3, :16].any()

    page.get_by_role("tab", name="Interpolate").click()
    page.click("#interpolate-button")  # nothing uploaded: a one-line error
    error_shown(page, "Upload two images first.")
    upload(page, "interpolate-first", first)
    upload(page, "interpolate-second", second)
    set_number(page, "interpolate-steps", 4)
    strip = press(page, "interpolate-button", "interpolate-output")
    check(strip, (4 * size, size))
    example(page, "interpolate-examples", 0)  # a pair of held-out emoji
    check(press(page, "interpolate-button", "interpolate-output"), (4 * size, size))


def error_shown(page, message: str):
    """Waits for the error ``message`` to show, then dismisses it."""
    page.get_by_text(message).first.wait_for(state="visible")
    for button in page.locator("[data-testid=toast-close]").all():
        button.click()
    page.get_by_text(message).first.wait_for(state="hidden")


def example(page, elem_id: str, index: int):
    """Clicks example ``index`` of the `gr.Examples` ``#elem_id`` (a button per example, or a row of a table)."""
    page.locator(f"#{elem_id}").locator("tbody tr, button.gallery-item, button").nth(index).click()


def wait_for_editor(page, elem_id: str):
    """Waits until the `gr.ImageEditor` ``#elem_id`` shows an image (its zoom, fitted to the image, above 100%)."""
    zoom = """(selector) => [...document.querySelectorAll(selector + " *")].some(
        node => node.children.length === 0 && /^[0-9]+%$/.test(node.textContent.trim())
                && parseInt(node.textContent) >= 100)"""
    page.wait_for_function(zoom, arg=f"#{elem_id}", timeout=TIMEOUT_MS)


def draw(page, elem_id: str, points: list[tuple[float, float]], size: tuple[int, int]):
    """Paints a stroke through ``points`` (pixels of the image, (x, y)) with the mouse on the `gr.ImageEditor`
    ``#elem_id``, whose image of ``size`` (width, height) the editor shows centred at its zoom."""
    editor = page.locator(f"#{elem_id}")
    editor.get_by_role("button", name="Brush", exact=True).click()
    zoom = int(editor.get_by_text(re.compile(r"^[0-9]+%$")).inner_text().strip()[:-1]) / 100
    box = editor.locator("canvas").first.bounding_box()
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    screen = [(centre[0] + (x - size[0] / 2) * zoom, centre[1] + (y - size[1] / 2) * zoom) for x, y in points]
    page.mouse.move(*screen[0])
    page.mouse.down()
    for start, end in zip(screen, screen[1:]):
        page.mouse.move(*end, steps=max(2, int(abs(end[1] - start[1]) // 8)))
    page.mouse.up()


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
    with serve(model) as (url, _):
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
        check(press(page, "sample-button", "sample-output"), (2 * 32, 32))

        page.get_by_role("tab", name="Edit").click()
        first = picture(tmp_path / "first.png", 30)
        upload_to_editor(page, "edit-input", first)
        upload(page, "edit-mask", half_mask(tmp_path / "mask.png", Image.open(first).size))
        page.locator("#edit-prompt textarea").fill("a green triangle")
        set_number(page, "edit-steps", 3)
        check(press(page, "edit-button", "edit-output"), (2 * 32, 32))
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
    # the handlers of the app's buttons (gr.Examples adds its own, "load_example...", which are gradio's)
    functions = {fn.api_name: fn.fn for fn in demo.fns.values() if not fn.api_name.startswith("load_example")}
    components = demo.config["components"]
    by_id = {c["props"]["elem_id"]: c["props"] for c in components if c["props"].get("elem_id")}
    texts = [c["props"]["value"] for c in components if c["type"] == "markdown"]
    return functions, by_id, texts


def halves(row: Image.Image, count: int) -> list[np.ndarray]:
    """The ``count`` pictures of a row, as int16 arrays."""
    array = np.asarray(row.convert("RGB"), dtype=np.int16)
    return np.split(array, count, axis=1)


CONDITION = {"prompt": None, "negative_prompt": None, "guidance_scale": None, "class_label": None}


def editor(image: Image.Image | None, *layers: Image.Image) -> dict:
    """A `gr.ImageEditor` value as the Edit tab's handler gets it: ``image`` as the background, painted ``layers``."""
    return {"background": image, "layers": list(layers), "composite": image}


def paint(size: tuple[int, int], *boxes: tuple[int, int, int, int], alpha: int = 255) -> Image.Image:
    """An RGBA layer of ``size`` (width, height), transparent but for the ``boxes`` (x0, y0, x1, y1, ends included)
    painted in the Space's brush colour with opacity ``alpha``."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    for box in boxes:
        ImageDraw.Draw(layer).rectangle(box, fill=(255, 0, 255, alpha))
    return layer


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
    edit = functions["edit"]  # editor, mask, strength, seed, steps, scheduler, count, then the conditioning
    image = Image.open(picture(tmp_path / "image.png", 30)).convert("RGB")  # 48x40: cropped to 32x32

    def press(mask=None, strength=0.8, seed=0, count=2, steps=4, scheduler="ddim"):
        return edit(editor(image), mask, strength, seed, steps, scheduler, count, *CONDITION.values())

    reconstruction = np.asarray(functions["reconstruct"](image)[0], dtype=np.int16)
    for picture_ in halves(press(strength=0.0), 2):  # strength 0: the reconstruction, whatever the seed
        assert np.abs(picture_ - reconstruction).max() <= 1
    low, high = press(strength=0.3), press(strength=1.0)
    assert np.array_equal(np.asarray(press(strength=0.3)), np.asarray(low))  # seeded
    distance = [np.abs(halves(r, 2)[0] - reconstruction).mean() for r in (low, high)]
    assert distance[0] < distance[1]
    sample = functions["sample"](0, 4, "ddim", 2, *CONDITION.values())
    assert np.array_equal(np.asarray(high), np.asarray(sample))  # strength 1: the image ignored
    assert press(strength=0.5, scheduler="dpm", count=3).size == (3 * 32, 32)

    black = Image.new("L", image.size, 0)
    white = Image.new("L", image.size, 255)
    half = Image.open(half_mask(tmp_path / "mask.png", image.size))
    for picture_ in halves(press(mask=black, strength=1.0), 2):  # nothing generated: the reconstruction
        assert np.abs(picture_ - reconstruction).max() <= 1
    assert np.array_equal(np.asarray(press(mask=white, strength=1.0)), np.asarray(sample))  # all generated
    inpainted = np.asarray(press(mask=half, strength=1.0))
    assert not np.array_equal(inpainted, np.asarray(sample)) and not np.array_equal(inpainted, np.asarray(
        press(mask=black, strength=1.0)))

    with pytest.raises(gr.Error, match="Upload an image to edit first"):
        edit(None, None, 0.8, 0, 4, "ddim", 1, *CONDITION.values())
    with pytest.raises(gr.Error, match="Upload an image to edit first"):  # only painted, on no image
        edit({"background": None, "layers": [paint((48, 40), (0, 0, 8, 8))], "composite": None}, None, 0.8, 0, 4,
             "ddim", 1, *CONDITION.values())
    with pytest.raises(gr.Error, match="mask_image: expected the size of its image, 48x40"):
        press(mask=Image.new("L", (32, 32), 255))
    with pytest.raises(gr.Error, match="The seed must be a whole number"):
        press(seed=-1)


def test_space_text_edit(vae, tmp_path):
    pytest.importorskip("diffusers_brics.models.text_encoder", reason="needs transformers (pip install -e '.[text]')")
    gr = gradio()
    from builders import tiny_text_pipeline

    functions, _, _ = build(tiny_text_pipeline(vae))
    image = Image.open(picture(tmp_path / "image.png", 30)).convert("RGB")
    half = Image.open(half_mask(tmp_path / "mask.png", image.size))
    edit = functions["edit"]
    red = edit(editor(image), half, 1.0, 0, 3, "ddim", 2, "a red circle", "", 3.0, None)
    assert red.size == (2 * 32, 32)
    assert not np.array_equal(np.asarray(edit(editor(image), half, 1.0, 0, 3, "ddim", 2, "a green triangle", "", 3.0,
                                              None)), np.asarray(red))
    reconstruction = np.asarray(functions["reconstruct"](image)[0], dtype=np.int16)
    for picture_ in halves(edit(editor(image), None, 0.0, 0, 3, "ddim", 2, "a red circle", "", 3.0, None), 2):
        assert np.abs(picture_ - reconstruction).max() <= 1
    with pytest.raises(gr.Error, match="Write a prompt first"):
        edit(editor(image), None, 0.5, 0, 3, "ddim", 1, "", "", 3.0, None)


def test_space_mask_drawn_in_the_image_editor(tmp_path):
    """The Edit tab's mask from a `gr.ImageEditor` value: white wherever a layer has paint (any opacity), of the
    image's size; none without paint; joined to an uploaded mask."""
    gr = gradio()
    app = load_app()
    size = (48, 40)
    assert app.drawn_mask(None, size) is None and app.drawn_mask(editor(None), size) is None
    assert app.drawn_mask(editor(Image.new("RGB", size), paint(size)), size) is None  # a layer without paint
    mask = app.drawn_mask(editor(None, paint(size, (2, 3, 9, 20)), paint(size, (30, 30, 47, 39), alpha=40)), size)
    expected = np.zeros((40, 48), dtype=bool)
    expected[3:21, 2:10] = expected[30:, 30:] = True
    assert mask.mode == "L" and mask.size == size and set(np.unique(np.asarray(mask))) == {0, 255}
    assert np.array_equal(np.asarray(mask) > 0, expected)
    stretched = app.drawn_mask(editor(None, paint((24, 20), (0, 0, 11, 9))), size)  # half size: stretched
    assert np.array_equal(np.asarray(stretched) > 0, np.pad(np.ones((20, 24), bool), ((0, 20), (0, 24))))

    uploaded = Image.open(half_mask(tmp_path / "mask.png", size))  # white on the right half
    assert app.edit_mask(None, None, size) is None
    assert app.edit_mask(mask, None, size) is mask and app.edit_mask(None, uploaded, size) is uploaded
    both = np.asarray(app.edit_mask(mask, uploaded, size)) > 0
    assert np.array_equal(both, expected | (np.arange(48) >= 24)[None])
    with pytest.raises(gr.Error, match="uploaded mask is 32x32 but the image is 48x40"):
        app.edit_mask(mask, Image.new("L", (32, 32)), size)

    transparent = Image.new("RGBA", size, (255, 0, 0, 0))  # a background's transparency becomes white
    assert np.asarray(app.editor_image(editor(transparent))).min() == 255
    assert app.editor_image(editor(None)) is None and app.editor_image(None) is None


def test_space_edit_inpaints_where_the_mask_is_drawn(vae, tmp_path):
    """Painting on the image edits as the same mask uploaded does; paint and an upload together as their union."""
    functions, _, _ = build(tiny_pipeline(vae))
    edit = functions["edit"]
    image = Image.open(picture(tmp_path / "image.png", 30)).convert("RGB")
    right = Image.open(half_mask(tmp_path / "mask.png", image.size))

    def press(value, mask=None):
        return np.asarray(edit(value, mask, 1.0, 0, 3, "ddim", 2, *CONDITION.values()))

    painted = press(editor(image, paint(image.size, (24, 0, 47, 39))))
    assert np.array_equal(painted, press(editor(image), right))
    assert not np.array_equal(painted, press(editor(image)))  # unpainted: image-to-image
    left = paint(image.size, (0, 0, 23, 39))
    assert np.array_equal(press(editor(image, left), right), press(editor(image), Image.new("L", image.size, 255)))


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
