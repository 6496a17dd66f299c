"""`brics sample` with a text-to-image pipeline (--prompt), with guidance, and editing an image (--image,
--strength, --mask): seeded outputs, the reconstruction at strength 0, and each misuse as one line."""

import numpy as np
import pytest
import torch
from builders import brics, plain_unet, tiny_class_pipeline, tiny_pipeline, tiny_text_pipeline
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

from diffusers_brics import BRICSAutoencoder, cli
from diffusers_brics.console import run_command

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Tiny pipelines (text-to-image; unconditional; class-conditional with a null class; pixel-space DDPM), an
    image of 48x40 pixels (not square: the crop is exercised) and masks of its size."""
    pytest.importorskip("diffusers_brics.models.text_encoder",
                        reason="needs transformers and tokenizers (pip install -e '.[text]')")
    root = tmp_path_factory.mktemp("cli-editing")
    torch.manual_seed(0)
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    tiny_text_pipeline(vae).save_pretrained(root / "text")
    tiny_pipeline(vae).save_pretrained(root / "plain")
    tiny_class_pipeline(vae).save_pretrained(root / "classes")
    DDPMPipeline(unet=plain_unet(3), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(root / "ddpm")

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "image.png")
    half = np.zeros((40, 48), dtype=np.uint8)
    half[:, 24:] = 255  # regenerate the right half
    Image.fromarray(half).save(root / "half.png")
    Image.new("L", (48, 40), 0).save(root / "black.png")
    Image.new("RGB", (48, 40), "white").save(root / "white.png")
    Image.new("L", (32, 32), 255).save(root / "small.png")
    return {name: root / name for name in ("text", "plain", "classes", "ddpm")} | {
        "image": root / "image.png", "half": root / "half.png", "black": root / "black.png",
        "white": root / "white.png", "small": root / "small.png"}


def sampled(models, folder, model="text", *extra) -> list[bytes]:
    """``brics sample`` (3 steps) into ``folder``; the bytes of each ``sample_*.png``."""
    if model == "text" and "--prompt" not in extra:
        extra = ("--prompt", "a red circle", *extra)
    assert cli.main(["sample", "--model", str(models[model]), "--num_inference_steps", "3", "--output_dir", str(folder),
                     *map(str, extra)]) == 0
    return [path.read_bytes() for path in sorted(folder.glob("sample_*.png"))]


def pixels(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_text_sampling_is_seeded(models, tmp_path):
    two = sampled(models, tmp_path / "two", "text", "--num_images", "2", "--seed", "4")
    again = sampled(models, tmp_path / "again", "text", "--num_images", "2", "--seed", "4")
    assert len(two) == 2 and two == again  # the same files, byte for byte
    assert two[0] != two[1]
    one = sampled(models, tmp_path / "one", "text", "--num_images", "1", "--seed", "5")
    assert one == two[1:]  # image i is drawn from seed + i
    assert Image.open(tmp_path / "two" / "grid.png").size == (2 * 32, 32)
    assert Image.open(tmp_path / "two" / "sample_000.png").size == (32, 32)


def test_text_guidance_defaults_to_the_pipelines_own(models, tmp_path):
    default = sampled(models, tmp_path / "default", "text", "--num_images", "1")
    assert sampled(models, tmp_path / "three", "text", "--num_images", "1", "--guidance_scale", "3") == default
    assert sampled(models, tmp_path / "one", "text", "--num_images", "1", "--guidance_scale", "1") != default
    assert sampled(models, tmp_path / "prompt", "text", "--num_images", "1", "--prompt", "a green triangle") != default
    negative = sampled(models, tmp_path / "negative", "text", "--num_images", "1", "--negative_prompt", "blue square")
    assert negative != default


def test_class_labels_with_guidance(models, tmp_path):
    cat = sampled(models, tmp_path / "cat", "classes", "--num_images", "1", "--class_label", "cat")
    assert sampled(models, tmp_path / "zero", "classes", "--num_images", "1", "--class_label", "0") == cat
    guided = sampled(models, tmp_path / "guided", "classes", "--num_images", "1", "--class_label", "cat",
                    "--guidance_scale", "2.5")
    assert len(guided) == 1 and guided != cat


@pytest.mark.parametrize("model", ["plain", "text"])
def test_strength_zero_gives_the_reconstruction(models, tmp_path, model):
    assert cli.main(["reconstruct", str(models["image"]), "--model", str(models[model]), "--output_dir",
                     str(tmp_path / "rec")]) == 0
    reconstruction = pixels((tmp_path / "rec" / "image.png").read_bytes())
    edits = sampled(models, tmp_path / "edit", model, "--image", models["image"], "--strength", "0", "--num_images", 2)
    assert len(edits) == 2
    for edit in edits:
        assert np.abs(pixels(edit) - reconstruction).max() <= 1


@pytest.mark.parametrize("model", ["plain", "text"])
def test_image_to_image_is_seeded_and_is_the_pipelines_own(models, tmp_path, model):
    """The untrained tiny models decode almost everything to mid-grey, so pixel distances say little here: the
    command is checked against the pipeline called with the same arguments (how strength acts on key codes is
    tested in test_pipeline_editing.py)."""
    from diffusers_brics.pipelines.key_codes import open_image
    from diffusers_brics.pipelines.loading import load_pipeline

    edit = ("--image", models["image"], "--strength", "0.5", "--num_images", 2)
    low = sampled(models, tmp_path / "low", model, *edit)
    assert sampled(models, tmp_path / "again", model, *edit) == low
    pipe = load_pipeline(str(models[model]), "ddim")
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"prompt": "a red circle", "num_images_per_prompt": 2} if model == "text" else {"batch_size": 2}
    expected = pipe(image=open_image(models["image"]), strength=0.5, num_inference_steps=3, output_type="np",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images
    for data, image in zip(low, expected):
        assert np.array_equal(pixels(data), (image * 255).round().astype(np.int16))
    high = sampled(models, tmp_path / "high", model, "--image", models["image"], "--strength", "1")
    assert high == sampled(models, tmp_path / "plain", model)  # strength 1: the image is ignored
    # the default strength (0.8) and another scheduler work too
    assert len(sampled(models, tmp_path / "dpm", model, "--image", models["image"], "--scheduler", "dpm",
                      "--num_images", 2)) == 2


@pytest.mark.parametrize("model", ["plain", "text"])
def test_inpainting_with_a_mask_file(models, tmp_path, model):
    assert cli.main(["reconstruct", str(models["image"]), "--model", str(models[model]), "--output_dir",
                     str(tmp_path / "rec")]) == 0
    reconstruction = pixels((tmp_path / "rec" / "image.png").read_bytes())
    image = ("--image", models["image"], "--num_images", 2)
    black = sampled(models, tmp_path / "black", model, *image, "--mask", models["black"])
    for edit in black:  # nothing to regenerate: the image's own key codes
        assert np.abs(pixels(edit) - reconstruction).max() <= 1
    white = sampled(models, tmp_path / "white", model, *image, "--mask", models["white"])
    assert white == sampled(models, tmp_path / "noise", model, "--num_images", 2)  # all regenerated, from the seeds
    half = sampled(models, tmp_path / "half", model, *image, "--mask", models["half"])
    assert half == sampled(models, tmp_path / "half-again", model, *image, "--mask", models["half"])
    assert half[0] != half[1]  # each sample from its own seed
    for edit, kept, fresh in zip(half, black, white):  # neither all kept nor all regenerated
        assert edit != kept and edit != fresh
    # a lower strength keeps more of the image where the mask is white
    assert sampled(models, tmp_path / "weak", model, *image, "--mask", models["half"], "--strength", "0.5") != half


def one_line_error(args, capsys) -> str:
    assert run_command(cli.main, list(map(str, args)), prog="brics") == 1, args
    lines = [line for line in capsys.readouterr().err.strip().splitlines()  # less the loading progress bars
             if line.strip() and "Loading pipeline components" not in line and "Loading weights" not in line]
    assert len(lines) == 2 and lines[0].startswith("brics: error: ") and "--debug" in lines[1], (args, lines)
    return lines[0]


@pytest.mark.parametrize("model, extra, message", [
    ("plain", ("--prompt", "a cat"), "--prompt needs a text-to-image pipeline"),
    ("classes", ("--negative_prompt", "a cat", "--class_label", "cat"), "--negative_prompt needs a text-to-image"),
    ("text", (), "is a text-to-image pipeline (BRICSTextToImagePipeline): pass --prompt"),
    ("text", ("--prompt", "x", "--class_label", "1"), "--class_label is for class-conditional pipelines"),
    ("plain", ("--guidance_scale", "2"), "guidance_scale 2.0 needs a class-conditional UNet"),
    ("classes", ("--class_label", "bird"), "not class names of this pipeline"),
    ("ddpm", ("--prompt", "a cat"), "--prompt needs a BRICS pipeline"),
    ("ddpm", ("--image", "IMAGE"), "--image needs a BRICS pipeline"),
    ("ddpm", ("--class_label", "1"), "--class_label needs a BRICS pipeline"),
    ("plain", ("--strength", "0.5"), "--strength needs --image"),
    ("text", ("--prompt", "x", "--mask", "HALF"), "--mask needs --image"),
    ("plain", ("--image", "IMAGE", "--mask", "SMALL"), "--mask is 32x32 but --image is 48x40"),
    ("text", ("--prompt", "x", "--image", "MISSING"), "--image: no such file"),
    ("plain", ("--image", "IMAGE", "--mask", "MISSING"), "--mask: no such file"),
])
def test_misuse_is_one_line(models, tmp_path, capsys, model, extra, message):
    files = {"IMAGE": models["image"], "HALF": models["half"], "SMALL": models["small"],
             "MISSING": tmp_path / "missing.png"}
    extra = [files.get(value, value) for value in extra]
    line = one_line_error(["sample", "--model", models[model], "--num_inference_steps", "2", "--output_dir",
                           tmp_path / "out", *extra], capsys)
    assert message in line, line
    assert not (tmp_path / "out" / "grid.png").exists()


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_a_bad_strength_is_a_usage_error(models, value, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["sample", "--model", str(models["plain"]), "--image", str(models["image"]), "--strength", value])
    lines = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("usage: brics sample --model M") and "argument --strength" in lines[1]
    with pytest.raises(SystemExit) as done:
        cli.main(["sample", "--model", str(models["text"]), "--prompt", "x", "--guidance_scale", "-1"])
    assert done.value.code == 2 and "argument --guidance_scale: must be a number >= 0" in capsys.readouterr().err


def test_a_child_process_exits_1_for_a_refused_flag_and_2_for_a_malformed_one(models):
    done = brics("sample", "--model", models["plain"], "--prompt", "a cat", "--num_inference_steps", 2)
    lines = [line for line in done.stderr.splitlines() if line.startswith("brics")]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("brics: error: --prompt needs a text-to-image pipeline"), done.stderr
    done = brics("sample", "--model", models["plain"], "--image", models["image"], "--strength", "2")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "brics sample: error: argument --strength: must be a number in [0, 1], got 2")
