import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from builders import tiny_pipeline, tiny_unet
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    ImagePipelineOutput,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from diffusers_brics import BRICSAutoencoder, BRICSPipeline
from diffusers_brics.pipelines import default_scheduler


@pytest.fixture
def pipe():
    return tiny_pipeline()


def sample(pipe, seed=0, **kwargs):
    kwargs = {"batch_size": 2, "num_inference_steps": 4, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_output_types(pipe):
    pil = sample(pipe, output_type="pil")
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    np_images = sample(pipe)
    assert np_images.shape == (2, 32, 32, 3) and np_images.min() >= 0 and np_images.max() <= 1
    pt = sample(pipe, output_type="pt")
    assert pt.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, atol=1e-6)
    latents = sample(pipe, output_type="latent")
    assert latents.shape == (2, 2, 8, 8) and float(latents.min()) >= 0 and float(latents.max()) <= 1
    with torch.no_grad():
        decoded = pipe.vae.decode(latents).sample.add(1).div(2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(decoded, np_images, atol=1e-5)
    out = pipe(batch_size=1, num_inference_steps=2)
    assert isinstance(out, ImagePipelineOutput)
    (images,) = pipe(batch_size=1, num_inference_steps=2, return_dict=False)
    assert len(images) == 1


def test_seeded_generators_are_deterministic(pipe):
    assert np.array_equal(sample(pipe, 0), sample(pipe, 0))
    assert not np.array_equal(sample(pipe, 0), sample(pipe, 1))
    # a list of generators: image i depends only on generator i
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    both = pipe(batch_size=2, generator=gens, num_inference_steps=4, output_type="np").images
    first = pipe(batch_size=1, generator=[torch.Generator().manual_seed(3)], num_inference_steps=4, output_type="np").images
    np.testing.assert_allclose(both[:1], first, atol=1e-5)


def test_given_latents_and_step_callback(pipe):
    latents = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    a = sample(pipe, 7, latents=latents, num_inference_steps=3)
    b = sample(pipe, 7, latents=latents.clone(), num_inference_steps=3)
    c = sample(pipe, 7, latents=-latents, num_inference_steps=3)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(int(t))
        return {"latents": kwargs["latents"]}

    pipe(batch_size=1, num_inference_steps=3, callback_on_step_end=callback)
    assert len(seen) == 3 and seen == sorted(seen, reverse=True)
    # returning None changes nothing; anything but a dict or None is refused
    np.testing.assert_array_equal(sample(pipe, 7, latents=latents, num_inference_steps=3,
                                         callback_on_step_end=lambda p, i, t, kwargs: None), a)
    with pytest.raises(ValueError, match="callback_on_step_end"):
        sample(pipe, callback_on_step_end=lambda p, i, t, kwargs: kwargs["latents"])


def test_diffusion_space_map_comes_from_the_vae_config(pipe):
    latents = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.3
    default = sample(pipe, latents=latents, output_type="latent")  # key codes clamp((x + 1) / 2)
    pipe.vae.register_to_config(scaling_factor=1.0, shift_factor=0.0)  # raw key codes as diffusion space
    raw = sample(pipe, latents=latents, output_type="latent")
    # the same denoised latents x, now read as clamp(x)
    x = default * 2 - 1
    unclamped = (default > 0) & (default < 1)
    torch.testing.assert_close(raw[unclamped], x[unclamped].clamp(0, 1))


def test_numpy_latents_are_accepted(pipe):
    latents = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(sample(pipe, latents=latents.numpy()), sample(pipe, latents=latents))


def test_save_load_round_trip(pipe, tmp_path):
    expected = sample(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = BRICSPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    # reloaded modules may pick other CPU kernels: equal to float32 rounding, as in diffusers' own tests
    np.testing.assert_allclose(sample(loaded), expected, atol=1e-5)
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # the folder names its own module files
        DiffusionPipeline.from_pretrained(tmp_path)
    generic = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)  # stock diffusers
    assert type(generic).__name__ == "BRICSPipeline"
    generic.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(sample(generic), expected, atol=1e-5)
    np.testing.assert_allclose(loaded.scheduler.alphas_cumprod, pipe.scheduler.alphas_cumprod)


@pytest.mark.parametrize(
    "scheduler_cls",
    [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, PNDMScheduler, EulerDiscreteScheduler,
     EulerAncestralDiscreteScheduler, HeunDiscreteScheduler],
)
def test_scheduler_swaps(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod, default_scheduler().alphas_cumprod, rtol=1e-6)
    images = sample(pipe, num_inference_steps=5)
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert np.array_equal(images, sample(pipe, num_inference_steps=5))


def test_second_order_scheduler_evaluates_the_unet_twice_per_step(pipe):
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(1))
    sample(pipe, num_inference_steps=3)
    assert len(calls) == 2 * 3 - 1  # the last step is first order


def test_ddim_eta_is_used_and_reproducible(pipe):
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    deterministic = sample(pipe, num_inference_steps=4)
    stochastic = sample(pipe, num_inference_steps=4, eta=1.0)
    assert np.array_equal(stochastic, sample(pipe, num_inference_steps=4, eta=1.0))
    assert not np.allclose(stochastic, deterministic)
    assert not np.allclose(stochastic, sample(pipe, 1, num_inference_steps=4, eta=1.0))
    for eta in (-0.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="eta"):
            sample(pipe, eta=eta)


def test_vae_in_train_mode_decodes_without_noise_and_keeps_its_mode(pipe):
    expected = sample(pipe)
    pipe.vae.train()
    pipe.vae.decoder.eval()
    assert np.array_equal(sample(pipe), sample(pipe))
    np.testing.assert_allclose(sample(pipe), expected, atol=1e-6)
    assert pipe.vae.training and pipe.vae.retrieval.training and not pipe.vae.decoder.training


def test_vae_slicing_and_cpu_offload_sequence(pipe):
    expected = sample(pipe)
    pipe.vae.enable_slicing()
    np.testing.assert_allclose(sample(pipe), expected, atol=1e-6)
    assert BRICSPipeline.model_cpu_offload_seq == "unet->vae"


def test_class_conditional_generation():
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    pipe = BRICSPipeline(unet=tiny_unet(num_class_embeds=3, seed=0), scheduler=default_scheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    a = sample(pipe, class_labels=[0, 2])
    b = sample(pipe, class_labels=[1, 1])
    assert a.shape == (2, 32, 32, 3) and not np.array_equal(a, b)
    assert np.array_equal(sample(pipe, class_labels=1), b)
    assert np.array_equal(sample(pipe, class_labels=torch.tensor([1, 1])), b)
    assert np.array_equal(sample(pipe, class_labels=np.array([1, 1])), b)
    with pytest.raises(ValueError, match="class_labels"):
        sample(pipe)
    integers = "class_labels must be integer class ids or class names"
    for labels, message in (([0, 1, 2], r"one label or batch_size \(2\), got 3"), ([0, 3], r"\[0, 3\)"),
                            (-1, r"\[0, 3\)"), ("cat", "not class names.*none"), (1.5, integers),
                            ([0, 1.0], integers), (True, integers), (torch.tensor([1.0, 2.0]), integers),
                            (torch.tensor([True, False]), integers), (np.array([0.5, 1.5]), integers)):
        with pytest.raises(ValueError, match=message):
            sample(pipe, class_labels=labels)


def test_class_names_round_trip_and_select_classes(tmp_path, caplog):
    vae = BRICSAutoencoder.from_preset("tiny").eval()
    pipe = BRICSPipeline(unet=tiny_unet(num_class_embeds=3, seed=0), scheduler=default_scheduler(), vae=vae,
                         id2label={0: "cat", 1: "dog", 2: "emoji"})
    pipe.save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        loaded = BRICSPipeline.from_pretrained(tmp_path)
    assert "Expected types" not in caplog.text  # diffusers' type check accepts the reloaded str keys
    loaded.set_progress_bar_config(disable=True)
    assert loaded.labels == {"cat": 0, "dog": 1, "emoji": 2} and loaded.config.id2label == {0: "cat", 1: "dog", 2: "emoji"}
    assert np.array_equal(sample(loaded, class_labels=["emoji", "dog"]), sample(loaded, class_labels=[2, 1]))
    with pytest.raises(ValueError, match="'bird'.*known: 'cat', 'dog', 'emoji'"):
        sample(loaded, class_labels="bird")
    # pipelines saved without class names still load
    BRICSPipeline(unet=tiny_unet(seed=0), scheduler=default_scheduler(), vae=vae).save_pretrained(tmp_path / "plain")
    assert BRICSPipeline.from_pretrained(tmp_path / "plain").labels == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-2), "batch_size"),
        (dict(batch_size=2, latents=torch.randn(2, 3, 8, 8)), r"latents must have shape \(2, 2, 8, 8\)"),
        (dict(batch_size=1, latents=torch.randn(2, 2, 8, 8)), "latents must have shape"),
        (dict(batch_size=2, generator=[torch.Generator()]), "generators"),
        (dict(batch_size=1, output_type="tensor"), "output_type"),
        (dict(batch_size=1, class_labels=[1]), "class embedding"),
        (dict(batch_size=True), "batch_size"),
        (dict(batch_size=1, latents=torch.full((1, 2, 8, 8), float("nan"))), "latents must be finite"),
        (dict(batch_size=1, latents=torch.full((1, 2, 8, 8), float("inf"))), "latents must be finite"),
        (dict(batch_size=1, latents=[[0.0]]), "latents must be a torch.Tensor"),
        (dict(batch_size=1, num_inference_steps=0), "num_inference_steps"),
        (dict(batch_size=1, num_inference_steps=-1), "num_inference_steps"),
        (dict(batch_size=1, num_inference_steps=2.5), "num_inference_steps"),
        (dict(batch_size=1, num_inference_steps=True), "num_inference_steps"),
        (dict(batch_size=1, num_inference_steps=1001), r"num_inference_steps must be .*1000"),
    ],
)
def test_bad_input_raises_value_error(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": 2, **kwargs})


@pytest.mark.parametrize("scheduler_cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler])
@pytest.mark.parametrize("steps", [0, 1001])
def test_step_count_is_checked_for_every_scheduler(pipe, scheduler_cls, steps):
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe(num_inference_steps=steps)


@pytest.mark.parametrize(
    "unet_kwargs, shown",
    [
        (dict(in_channels=3, out_channels=3), r"\(3, 3, \(8, 8\)\)"),
        (dict(out_channels=4), r"\(2, 4, \(8, 8\)\)"),
        (dict(sample_size=4), r"\(2, 2, \(4, 4\)\)"),
        (dict(sample_size=(8, 4)), r"\(2, 2, \(8, 4\)\)"),
    ],
)
def test_unet_that_does_not_fit_the_vae_is_refused(pipe, unet_kwargs, shown):
    pipe.unet = tiny_unet(**unet_kwargs, seed=0)
    with pytest.raises(ValueError, match=shown + r".*\(C_z, H_z, W_z\) = \(2, 8, 8\)"):
        sample(pipe)


@pytest.mark.parametrize("sample_size", [(8, 8), [8, 8], None])
def test_unet_sample_size_may_be_a_pair_or_unset(pipe, sample_size):
    pipe.unet = tiny_unet(sample_size=sample_size, seed=0)
    assert sample(pipe).shape == (2, 32, 32, 3)


def test_missing_local_folder_raises_file_not_found(tmp_path, monkeypatch):
    asked = []

    def hub_download(repo_id, *args, **kwargs):
        asked.append(repo_id)
        raise ConnectionError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    missing = tmp_path / "missing"
    monkeypatch.chdir(tmp_path)
    for path in (missing, str(missing), "./missing", "../missing", "~/no-such-folder-for-brics", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="missing|no-such-folder|a/b/c"):
            BRICSPipeline.from_pretrained(path)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match="file"):
        BRICSPipeline.from_pretrained(tmp_path / "file")
    assert asked == []
    for repo_id in ("org/name", "name"):  # repo ids still go to the Hub
        with pytest.raises(ConnectionError):
            BRICSPipeline.from_pretrained(repo_id)
    assert asked == ["org/name", "name"]


def test_swapped_schedulers_keep_brics_key_codes_in_range(pipe):
    """`swap_scheduler` clips the clean-sample estimate to the key codes' range in diffusion space ([-1, 1]); other
    autoencoders' latents stay unbounded."""
    from diffusers import AutoencoderKL

    from diffusers_brics.pipelines.loading import key_code_bound, swap_scheduler

    assert key_code_bound(pipe.vae) == 1.0 and key_code_bound(None) is None
    for name, expected in (("ddim", {"clip_sample": True, "clip_sample_range": 1.0}),
                           ("ddpm", {"clip_sample": True, "clip_sample_range": 1.0}),
                           ("dpm", {"thresholding": True, "sample_max_value": 1.0})):
        config = swap_scheduler(pipe, name).scheduler.config
        assert {key: config[key] for key in expected} == expected, name
    # the noise schedule itself is kept
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod, default_scheduler().alphas_cumprod, rtol=1e-6)
    pipe.scheduler = default_scheduler()
    kl = BRICSPipeline(unet=pipe.unet, scheduler=default_scheduler(),
                       vae=AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=2))
    assert key_code_bound(kl.vae) is None
    assert swap_scheduler(kl, "ddim").scheduler.config.clip_sample is False
