"""Image-to-image, inpainting and classifier-free guidance on `BRICSPipeline` (shared with the text pipeline)."""

import numpy as np
import PIL.Image
import pytest
import torch
from builders import tiny_pipeline, tiny_unet
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from diffusers_brics import BRICSPipeline
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.pipelines.inputs import prepare_mask
from diffusers_brics.pipelines.key_codes import encode_images, sample_size_of, to_pil


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]


def denoise(pipe, seed=0, **kwargs):
    kwargs = {"num_inference_steps": 6, "output_type": "latent", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_strength_zero_gives_the_reconstruction_of_the_input(pipe, pictures):
    codes = encode_images(pipe.vae, pictures)
    assert torch.equal(denoise(pipe, image=pictures, strength=0.0), codes)
    images = denoise(pipe, image=pictures, strength=0.0, output_type="np")
    with torch.no_grad():
        expected = pipe.vae.decode(codes).sample.add(1).div(2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_strength_one_ignores_the_image(pipe, pictures):
    unconditional = denoise(pipe, batch_size=2)
    assert torch.equal(denoise(pipe, image=pictures, strength=1.0), unconditional)
    assert torch.equal(denoise(pipe, image=pictures[::-1], strength=1.0), unconditional)


def test_strength_sets_how_far_the_result_moves_from_the_image(pipe, pictures):
    codes = encode_images(pipe.vae, pictures)
    distance = {s: float((denoise(pipe, image=pictures, strength=s) - codes).abs().mean()) for s in (0.2, 0.5, 1.0)}
    assert 0 < distance[0.2] < distance[0.5] < distance[1.0]
    assert torch.equal(denoise(pipe, image=pictures, strength=0.5), denoise(pipe, image=pictures, strength=0.5))
    # one image for the whole batch; several images and batch_size 1 give one sample per image
    assert denoise(pipe, image=pictures[0], batch_size=3, strength=0.5).shape[0] == 3
    assert denoise(pipe, image=pictures, strength=0.5).shape[0] == 2


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler])
def test_image_to_image_with_other_schedulers(pipe, pictures, scheduler_cls):
    original = pipe.scheduler
    pipe.scheduler = scheduler_cls.from_config(original.config)
    try:
        codes = encode_images(pipe.vae, pictures)
        low, high = (float((denoise(pipe, image=pictures, strength=s) - codes).abs().mean()) for s in (0.2, 1.0))
        assert low < high
    finally:
        pipe.scheduler = original


def test_inpainting_keeps_the_unmasked_key_codes_exactly(pipe, pictures):
    codes = encode_images(pipe.vae, pictures)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[:, :16] = 1  # generate the left half
    out = denoise(pipe, image=pictures, mask_image=mask)
    keep = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    keep[..., 4:] = True
    kept = keep.expand_as(out)
    assert torch.equal(out[kept], codes[kept])
    assert not torch.allclose(out[~kept], codes[~kept], atol=1e-3)
    # a PIL mask (white: generate) and one mask per image give the same
    picture = PIL.Image.fromarray((mask * 255).astype(np.uint8))
    assert torch.equal(denoise(pipe, image=pictures, mask_image=picture), out)
    assert torch.equal(denoise(pipe, image=pictures, mask_image=[picture, picture]), out)
    # an all-black mask keeps everything
    assert torch.equal(denoise(pipe, image=pictures, mask_image=np.zeros((32, 32))), codes)


def test_a_masked_pixel_marks_its_key_code_cell(pipe):
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[9, 30] = 1  # row 9 -> cell 2 (4 pixels per key code), column 30 -> cell 7
    grid = prepare_mask(mask, [(32, 32)], pipe.vae)
    assert grid.shape == (1, 1, 8, 8) and int(grid.sum()) == 1 and bool(grid[0, 0, 2, 7])


def test_masks_follow_the_images_resize_and_crop(pipe):
    wide = PIL.Image.new("RGB", (64, 32), (200, 10, 10))
    mask = np.zeros((32, 64), dtype=np.float32)
    mask[:, 16:24] = 1  # the centre crop keeps columns 16..47: these are its columns 0..7, key-code cells 0 and 1
    mask[:, :16] = 1  # cropped away
    grid = prepare_mask(mask, [wide.size], pipe.vae)
    assert grid[0, 0].any(dim=0).nonzero().flatten().tolist() == [0, 1] and bool(grid[0, 0, :, :2].all())
    assert denoise(pipe, image=wide, mask_image=mask).shape == (1, 2, 8, 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=1.5), "strength must be a number in [0, 1]"),
    (dict(strength=-0.1), "strength must be a number in [0, 1]"),
    (dict(strength=True), "strength must be a number in [0, 1]"),
    (dict(mask_image=np.ones((16, 16))), "expected the size of its image, 32x32"),
    (dict(mask_image=np.ones((32, 32)) * 2), "mask_image: expected finite values in [0, 1]"),
    (dict(mask_image=np.ones((2, 3, 32, 32))), "mask_image: expected shape"),
    (dict(mask_image=[np.ones((32, 32))] * 3), "mask_image: expected a PIL image"),
    (dict(batch_size=3), "expected one image or one per generated image (3), got 2"),
    (dict(guidance_scale=2.0), "guidance_scale 2.0 needs a class-conditional UNet"),
])
def test_bad_editing_input_raises_value_error(pipe, pictures, kwargs, message):
    with pytest.raises(ValueError) as error:
        denoise(pipe, image=pictures, **kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.5), "strength applies to image-to-image"),
    (dict(mask_image=np.ones((32, 32))), "mask_image needs the image"),
    (dict(image=torch.zeros(1, 3, 16, 16)), "expected a tensor of shape (N, 3, 32, 32)"),
    (dict(image=torch.full((1, 3, 32, 32), 3.0)), "image: expected values in [-1, 1]"),
    (dict(image=torch.full((1, 3, 32, 32), float("nan"))), "finite"),
    (dict(image=[np.zeros((32, 32, 3))]), "image: expected PIL images, image files or a tensor"),
    (dict(image="/no/such/picture.png"), "no such file"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a number >= 0"),
])
def test_bad_image_or_guidance_input_is_refused(pipe, kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        denoise(pipe, **kwargs)
    assert message in str(error.value)


def test_a_tensor_image_in_minus_one_to_one_works_as_pictures_do(pipe, pictures):
    from diffusers_brics.pipelines.key_codes import images_to_tensor

    pixels = images_to_tensor(pictures, pipe.vae)
    assert torch.equal(denoise(pipe, image=pixels, strength=0.4), denoise(pipe, image=pictures, strength=0.4))


@pytest.fixture(scope="module")
def class_pipe(pipe):
    """Three classes and the null class (id 3) of conditioning dropout."""
    pipeline = BRICSPipeline(unet=tiny_unet(num_class_embeds=4, seed=0), scheduler=default_scheduler(), vae=pipe.vae,
                             id2label={0: "a", 1: "b", 2: "c"}, null_class_id=3)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_class_guidance_one_is_the_unguided_result(class_pipe):
    unguided = BRICSPipeline(unet=class_pipe.unet, scheduler=class_pipe.scheduler, vae=class_pipe.vae,
                             id2label=class_pipe.config.id2label)
    unguided.set_progress_bar_config(disable=True)
    expected = denoise(unguided, batch_size=2, class_labels=["a", "c"])
    assert torch.equal(denoise(class_pipe, batch_size=2, class_labels=["a", "c"], guidance_scale=1.0), expected)
    guided = denoise(class_pipe, batch_size=2, class_labels=["a", "c"], guidance_scale=3.0)
    assert not torch.allclose(guided, expected, atol=1e-4)
    # guidance 0 is the null class's own prediction: the unguided result of class id 3
    np.testing.assert_allclose(denoise(class_pipe, batch_size=2, class_labels=["a", "c"], guidance_scale=0.0),
                               denoise(unguided, batch_size=2, class_labels=3), atol=1e-5)


def test_class_guidance_with_inpainting(class_pipe, pictures):
    codes = encode_images(class_pipe.vae, pictures)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 16:, :] = 1
    out = denoise(class_pipe, image=pictures, mask_image=mask, class_labels="b", guidance_scale=2.0)
    assert torch.equal(out[:, :, :4], codes[:, :, :4])


def test_null_class_id_round_trips(class_pipe, tmp_path):
    class_pipe.save_pretrained(tmp_path)
    loaded = BRICSPipeline.from_pretrained(tmp_path)
    assert loaded.config.null_class_id == 3 and loaded.labels == {"a": 0, "b": 1, "c": 2}
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(denoise(loaded, class_labels="b", guidance_scale=2.0),
                               denoise(class_pipe, class_labels="b", guidance_scale=2.0), atol=1e-5)


def test_image_and_mask_files(pipe, pictures, tmp_path):
    pictures[0].save(tmp_path / "image.png")
    mask = PIL.Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    mask.save(tmp_path / "mask.png")
    from_files = denoise(pipe, image=str(tmp_path / "image.png"), mask_image=tmp_path / "mask.png")
    assert torch.equal(from_files, denoise(pipe, image=pictures[0], mask_image=mask))
    with pytest.raises(FileNotFoundError, match="mask_image"):
        denoise(pipe, image=pictures[0], mask_image=tmp_path / "missing.png")


def test_to_pil_takes_a_batch_or_one_image():
    images = torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pictures = to_pil(images)
    assert [p.size for p in pictures] == [(6, 8), (6, 8)] and all(p.mode == "RGB" for p in pictures)
    expected = ((images[1] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(to_pil(images[1])), expected)
    assert np.array_equal(np.asarray(pictures[1]), expected)


def test_sample_size_of_an_autoencoder_and_of_pipelines(pipe):
    from diffusers import DDPMPipeline, DDPMScheduler

    assert sample_size_of(pipe.vae) == sample_size_of(pipe) == 32
    pixels = DDPMPipeline(unet=tiny_unet(3, sample_size=16, seed=0),
                          scheduler=DDPMScheduler(num_train_timesteps=10))
    assert sample_size_of(pixels) == 16  # a pixel-space pipeline: its UNet's
