"""The stage-2 training (`diffusers_brics.training.diffusion.main`, what examples/train_brics_diffusion.py runs) in
this process, on a folder of ten random images (with a metadata.jsonl of categories and captions where needed): a
saved pipeline and its cached key codes, what the cache refuses, pixel space, the latents of diffusers' autoencoders,
class and caption conditioning. The slow tests of the same names run the script in child processes on the embedded
emoji (encoding the whole set takes most of their time): test_train_text_to_image.py's make the same checks there,
test_train_diffusion.py's only what such runs add (the whole set encoded, its cache reused by the next process, a
refusal as the process's exit status)."""

import json

import numpy as np
import pytest
import torch
from builders import DIFFUSION_FAST, generate_from_prompts, run_in_process

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler
from diffusers_brics.training import diffusion

IMAGE_COUNT = 10


def train(*args, **flags) -> int:
    """``train_brics_diffusion.py`` with the tests' fast flags, batches of 4, ``args`` and ``flags`` (``name=value``
    for ``--name value``, ``name=True`` for ``--name``), in this process with a fresh accelerate state (as a new
    process has); its exit status (an error is one line on stderr, as the script's)."""
    argv = [*DIFFUSION_FAST, "--train_batch_size", "4", *args]
    for name, value in flags.items():
        argv += [f"--{name}"] if value is True else [f"--{name}", value]
    return run_in_process(diffusion.main, argv, prog="train_brics_diffusion.py")


def refused(capsys, *args, **flags) -> str:
    """The one-line error of a run that must fail."""
    capsys.readouterr()
    assert train(*args, **flags) == 1, (args, flags)
    return capsys.readouterr().err


@pytest.fixture
def images(random_image_folder):
    return random_image_folder(IMAGE_COUNT)


CATEGORIES = ["animals", "flags", "food"]


@pytest.fixture
def labelled(images):
    """`images` with a metadata.jsonl that datasets' imagefolder reads: a ``category`` (one of `CATEGORIES`, not in
    sorted order of first appearance), a ``short_name`` and a ``caption`` per image."""
    rows = [
        {
            "file_name": f"{i}.png",
            "category": CATEGORIES[(2 * i + 1) % 3],
            "short_name": f"image {i}",
            "caption": f"a picture of {CATEGORIES[(2 * i + 1) % 3]}, number {i % 4}",
        }
        for i in range(IMAGE_COUNT)
    ]
    (images / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return images


def test_every_image_is_encoded_and_a_cache_from_other_inputs_is_refused(tmp_path, autoencoder, images, capsys, caplog):
    import datasets

    out = tmp_path / "run"
    base = dict(
        autoencoder=autoencoder, train_data_dir=images, output_dir=out, max_train_steps=1, checkpointing_steps=1
    )
    assert train(**base) == 0
    # none held out: stage 2 does not evaluate
    assert len(datasets.load_from_disk(str(out / "key_codes"))) == IMAGE_COUNT

    other = tmp_path / "other_vae"
    torch.manual_seed(1)
    BRICSAutoencoder.from_preset("tiny").save_pretrained(other)
    assert "were encoded with other autoencoder_sha256" in refused(capsys, **(base | dict(autoencoder=other)))
    assert "random_flip (False; this run: True)" in refused(capsys, **base, random_flip=True)
    embedded = {name: value for name, value in base.items() if name != "train_data_dir"}
    assert "data ('" in refused(capsys, **embedded)  # the embedded emoji instead of the folder
    (out / "key_codes" / "brics_key_code_cache.json").unlink()
    assert "have no record of what they were encoded from" in refused(capsys, **base)
    # a batch larger than the data shrinks to it (then the cache is refused, as above)
    with caplog.at_level("WARNING"):
        assert "have no record of what they were encoded from" in refused(capsys, **base, train_batch_size=11)
    assert (
        f"--train_batch_size 11 x 1 process(es) x --gradient_accumulation_steps 1: training with "
        f"--train_batch_size {IMAGE_COUNT} instead" in caplog.text
    )


def test_pixel_space_diffusion_saves_a_stock_ddpm_pipeline_and_resumes(tmp_path, images, capsys, caplog):
    import datasets
    from diffusers import DDPMPipeline, DiffusionPipeline

    from diffusers_brics.training.data import image_transform

    out = tmp_path / "pixels"
    common = dict(train_data_dir=images, output_dir=out, random_flip=True)
    assert train(autoencoder="none", **common, max_train_steps=2, checkpointing_steps=2) == 0
    # the cache holds the centre-cropped images in [-1, 1], then their mirror images
    cached = datasets.load_from_disk(str(out / "key_codes")).with_format("torch")
    first_image = datasets.load_dataset("imagefolder", data_dir=str(images))["train"][0]["image"]
    assert len(cached) == 2 * IMAGE_COUNT and cached[0]["key_codes"].shape == (3, 32, 32)
    first = image_transform(32, center_crop=True)(first_image)
    torch.testing.assert_close(cached[0]["key_codes"], first)
    torch.testing.assert_close(cached[IMAGE_COUNT]["key_codes"], first.flip(-1))
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    assert "DDPMPipeline" in (out / "README.md").read_text() and (out / "samples.png").exists()
    assert json.loads((out / "metrics.json").read_text())["step"] == 2

    pipe = DiffusionPipeline.from_pretrained(out)  # diffusers alone loads it
    assert type(pipe) is DDPMPipeline and not hasattr(pipe, "vae")
    assert (pipe.unet.config.in_channels, pipe.unet.config.sample_size) == (3, 32)
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod, default_scheduler().alphas_cumprod, rtol=1e-6)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in range(2)]
    samples = pipe(batch_size=2, generator=generators, num_inference_steps=3, output_type="np").images
    assert samples.shape == (2, 32, 32, 3) and np.isfinite(samples).all()

    with caplog.at_level("INFO"):
        resumed = train(
            autoencoder="pixels", **common, max_train_steps=3, checkpointing_steps=3, resume_from_checkpoint="latest"
        )
    assert resumed == 0
    assert f"reusing {2 * IMAGE_COUNT} cached images" in caplog.text and "at step 2" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["step"] == 3
    # the cached images are refused for another size
    error = refused(capsys, autoencoder="none", **common, max_train_steps=4, resolution=16)
    assert "were encoded with other resolution (32; this run: 16)" in error


@pytest.mark.parametrize("model_type", ["autoencoderkl", "vqmodel"])
def test_diffusion_on_the_latents_of_diffusers_autoencoders_with_a_fitted_scale(tmp_path, images, model_type, caplog):
    import datasets

    from diffusers_brics.models import adapters

    vae_dir, out = tmp_path / "stage1", tmp_path / "ldm"
    torch.manual_seed(0)
    adapters.build_autoencoder(model_type, "tiny").save_pretrained(vae_dir / "autoencoder")  # a stage-1 output folder
    common = dict(autoencoder=vae_dir, train_data_dir=images, output_dir=out)
    with caplog.at_level("INFO"):
        assert train(**common, max_train_steps=2, checkpointing_steps=2) == 0
    codes = datasets.load_from_disk(str(out / "key_codes")).with_format("torch")["key_codes"]
    fitted = 1 / float(codes[:1024].std())
    assert f"scaling_factor {fitted:.5f} fitted" in caplog.text
    pipe = BRICSPipeline.from_pretrained(out)
    assert type(pipe.vae).__name__ == adapters.AUTOENCODER_CLASSES[model_type].__name__
    assert pipe.vae.config.scaling_factor == pytest.approx(fitted)
    samples = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np"
    ).images
    assert samples.shape == (2, 32, 32, 3) and np.isfinite(samples).all()
    # a given scale is used as it is
    caplog.clear()
    with caplog.at_level("INFO"):
        resumed = train(
            **common, max_train_steps=3, checkpointing_steps=3, resume_from_checkpoint="latest", scaling_factor=0.5
        )
    assert resumed == 0
    assert "fitted" not in caplog.text and BRICSPipeline.from_pretrained(out).vae.config.scaling_factor == 0.5


def test_a_caption_column_that_is_missing_or_not_text_is_refused(tmp_path, autoencoder, capsys):
    error = refused(capsys, autoencoder=autoencoder, output_dir=tmp_path / "out", caption_column="nope")
    assert "caption_column 'nope' is not in the dataset" in error
    encoder = tmp_path / "no-encoder"
    missing = refused(
        capsys,
        autoencoder=autoencoder,
        output_dir=tmp_path / "out2",
        caption_column="caption",
        text_encoder_name_or_path=encoder,
    )
    assert "text_encoder_name_or_path" in missing


def test_trains_and_saves_a_loadable_pipeline_with_cached_key_codes(tmp_path, autoencoder, images, caplog):
    import datasets

    out = tmp_path / "ldm"
    common = dict(autoencoder=autoencoder, train_data_dir=images, output_dir=out, random_flip=True)
    with caplog.at_level("INFO"):
        assert train(**common, max_train_steps=3, checkpointing_steps=3) == 0
    assert (out / "key_codes").is_dir() and (out / "samples.png").exists()
    assert "BRICSPipeline" in (out / "README.md").read_text()
    pipe = BRICSPipeline.from_pretrained(out)
    samples = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np")
    assert samples.images.shape == (2, 32, 32, 3) and np.isfinite(samples.images).all()
    # default schedule: the cosine variant
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod, default_scheduler().alphas_cumprod, rtol=1e-6)
    # the short recipe's key codes at unit variance (scaling_factor 1 / std of the cached codes, shift 0.5 kept) ...
    codes = datasets.load_from_disk(str(out / "key_codes")).with_format("torch")[:]["key_codes"]
    assert len(codes) == 2 * IMAGE_COUNT  # flipped twins included
    fitted = 1 / float(codes.std())
    assert f"scaling_factor {fitted:.5f} fitted" in caplog.text
    assert pipe.vae.config.scaling_factor == pytest.approx(fitted) and pipe.vae.config.shift_factor == 0.5
    # ... its prediction type, and the clean-sample clipping to the key codes' range [0, 1] in diffusion space, saved
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert (saved["prediction_type"], saved["clip_sample"]) == ("sample", True)
    assert saved["clip_sample_range"] == pytest.approx(0.5 * fitted)
    assert pipe.scheduler.config.clip_sample and pipe.scheduler.config.prediction_type == "sample"

    with caplog.at_level("INFO"):
        resumed = train(
            **common,
            max_train_steps=5,
            checkpointing_steps=5,
            resume_from_checkpoint="latest",
            schedule="cosine",
            snr_gamma=5,
        )
    assert resumed == 0
    assert f"reusing {2 * IMAGE_COUNT} cached key codes" in caplog.text and "at step 3" in caplog.text


def test_class_conditional_training_on_a_column_of_categories(tmp_path, autoencoder, labelled, capsys):
    import datasets

    out = tmp_path / "cond"
    common = dict(autoencoder=autoencoder, train_data_dir=labelled, output_dir=out)
    assert (
        train(**common, max_train_steps=2, checkpointing_steps=2, class_column="category", num_validation_images=3) == 0
    )
    pipe = BRICSPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds == len(CATEGORIES)
    assert pipe.labels == {name: i for i, name in enumerate(CATEGORIES)}  # classes in sorted order
    samples = pipe(
        batch_size=2,
        class_labels=["flags", "food"],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert samples.shape == (2, 32, 32, 3) and np.isfinite(samples).all()
    card = (out / "README.md").read_text()
    assert "class_labels=['animals']" in card and "Classes (`--class_column category`)" in card
    cached = datasets.load_from_disk(str(out / "key_codes"))
    folder = datasets.load_dataset("imagefolder", data_dir=str(labelled))["train"]
    assert list(cached["class_labels"]) == [CATEGORIES.index(c) for c in folder["category"]]

    # the cache holds category labels: another class column must not reuse it
    error = refused(capsys, **common, max_train_steps=3, class_column="short_name")
    assert "were encoded with other class_column ('category'; this run: 'short_name')" in error


def test_text_training_with_a_built_frozen_encoder_saves_a_text_to_image_pipeline(tmp_path, autoencoder, labelled):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from diffusers_brics import BRICSTextToImagePipeline

    out = tmp_path / "t2i"
    assert (
        train(
            autoencoder=autoencoder,
            train_data_dir=labelled,
            output_dir=out,
            max_train_steps=2,
            checkpointing_steps=2,
            caption_column="caption",
            text_encoder_preset="tiny",
        )
        == 0
    )
    assert (out / "key_codes").is_dir() and (out / "prompt_embeds.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-to-image" in card and "BRICSTextToImagePipeline" in card
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["tokenizer"][0] == "transformers"
    pipe = BRICSTextToImagePipeline.from_pretrained(out)
    prompts = ["a picture of flags, number 1", "a picture of food, number 2"]
    samples = generate_from_prompts(pipe, prompts)
    assert samples.shape == (2, 32, 32, 3) and np.isfinite(samples).all()
    # stock diffusers loads it too, and samples the same
    stock = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    np.testing.assert_allclose(generate_from_prompts(stock, prompts), samples, atol=1e-6)
    # the frozen encoder's hidden states were cached, one row per caption and one for the empty caption
    table = load_file(out / "prompt_embeds.safetensors")["embeds"]
    assert table.shape[1:] == (pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)


def test_class_conditioning_dropout_learns_a_null_class_for_guidance(tmp_path, autoencoder, labelled):
    out = tmp_path / "classes"
    assert (
        train(
            autoencoder=autoencoder,
            train_data_dir=labelled,
            output_dir=out,
            max_train_steps=2,
            checkpointing_steps=2,
            class_column="category",
            conditioning_dropout_prob=0.2,
        )
        == 0
    )
    pipe = BRICSPipeline.from_pretrained(out)
    classes = len(pipe.labels)
    assert pipe.config.null_class_id == classes and pipe.unet.config.num_class_embeds == classes + 1
    assert "guidance_scale=3" in (out / "README.md").read_text()
    pipe.set_progress_bar_config(disable=True)
    samples = pipe(
        batch_size=2, class_labels="flags", guidance_scale=3.0, num_inference_steps=3, output_type="np"
    ).images
    assert np.isfinite(samples).all()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "fit"),  # the short recipe (a small UNet): unit variance
        (["--unet_preset", "paper"], None),  # the release recipe: the autoencoder's own map onto [-1, 1]
        (["--training_recipe", "release"], None),
        (["--training_recipe", "release", "--scaling_factor", "fit"], "fit"),
        (["--scaling_factor", "3.5"], 3.5),
        (["--autoencoder", "none"], None),  # images are modelled as they are, whatever the recipe
    ],
)
def test_scaling_factor_per_recipe(flags, expected):
    from diffusers_brics.training.diffusion_args import parse_args

    assert parse_args(["--autoencoder", "some/vae", *flags]).scaling_factor == expected


def test_scaling_factor_refuses_other_words(capsys):
    from diffusers_brics.training.diffusion_args import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--autoencoder", "some/vae", "--scaling_factor", "unit"])
    assert "--scaling_factor: must be 'fit' or a number > 0, got 'unit'" in capsys.readouterr().err


def test_gradient_checkpointing_recomputes_the_unet_blocks_and_trains_the_same_weights(
    tmp_path, autoencoder, images, monkeypatch
):
    import torch.utils.checkpoint
    from safetensors.torch import load_file

    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    common = dict(autoencoder=autoencoder, train_data_dir=images, max_train_steps=2, checkpointing_steps=2)
    assert train(**common, output_dir=tmp_path / "plain") == 0
    assert not calls
    assert train(**common, output_dir=tmp_path / "checkpointed", gradient_checkpointing=True) == 0
    assert calls  # diffusers' UNet blocks ran through torch.utils.checkpoint
    plain, checkpointed = (load_file(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors")
                           for run in ("plain", "checkpointed"))  # fmt: skip
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], msg=key)
