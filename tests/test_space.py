"""The Space (space/app.py) end to end in a headless Chromium: each tab with a tiny pipeline, through the browser.

Needs gradio, playwright (pip) and Chromium (/usr/bin/chromium, Debian's `chromium`); run with ``pytest -m browser``.
``BRICS_SPACE_SCREENSHOT=1`` also saves a screenshot after the Reconstruct tab ran to docs/images/space.png; with
``BRICS_MODEL`` set too, the app serves that model (e.g. the quickstart pipeline) and gets held-out emoji.
"""

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
    from diffusers import UNet2DModel

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
        unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4)
        BRICSPipeline(unet=unet, scheduler=default_scheduler(), vae=vae).save_pretrained(folder)
        model = dataclasses.replace(load_model(folder, "cpu"), source="tiny-untrained-pipeline")

    app = load_app()
    demo = app.build_demo(model)
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, css=app.CSS, ssr_mode=False,
                quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "size": vae.config.sample_size, "channels": channels,
               "latent_size": size}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def page(space):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                             timeout=TIMEOUT_MS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(space["url"], wait_until="networkidle")
            yield page
        finally:
            browser.close()


def run(page, button: str, output: str) -> Image.Image:
    """Clicks ``#button`` and returns the picture ``#output`` then shows, fetched from its URL."""
    page.click(f"#{button}")
    page.locator(f"#{output} img").wait_for(state="visible")
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

    page.get_by_role("tab", name="Interpolate").click()
    page.click("#interpolate-button")  # nothing uploaded: a one-line error
    page.get_by_text("Upload two images first.").first.wait_for(state="visible")
    upload(page, "interpolate-first", first)
    upload(page, "interpolate-second", second)
    set_number(page, "interpolate-steps", 4)
    check(run(page, "interpolate-button", "interpolate-output"), (4 * size, size))


def test_space_autoencoder_only():
    """An autoencoder without a pipeline: the Sample tab says why it cannot sample, the others work."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[demo]')")
    from diffusers_brics import BRICSAutoencoder
    from diffusers_brics.pipelines.loading import LoadedModel

    demo = load_app().build_demo(LoadedModel(BRICSAutoencoder.from_preset("tiny").eval(), None, "ae"))
    texts = [c["props"]["value"] for c in demo.config["components"] if c["type"] == "markdown"]
    assert len(texts) == 2 and "without a diffusion model" in texts[1]
    assert {fn.api_name for fn in demo.fns.values()} == {"reconstruct", "interpolate"}
