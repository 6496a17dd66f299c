"""Stage 1's discriminator step as the BRICS release takes it, as options: R1 as a discriminator step of its own
(`training.separate_step`), the reconstruction recomputed after the autoencoder's update, NVlabs' float16 blocks and
``conv_clamp``; and the default step (R1 in the main loss, the loss's reconstruction reused, float32) unchanged."""

import warnings

import pytest
import torch

from diffusers_brics import BRICSAutoencoder
from diffusers_brics.training import autoencoder_args, loop
from diffusers_brics.training.autoencoder import AutoencoderStage
from diffusers_brics.training.discriminator import StyleGAN2Discriminator
from diffusers_brics.training.separate_step import SeparateStep


def train_stage_one(tmp_path, images, steps, *flags, monkeypatch):
    """``steps`` steps of the tiny autoencoder against the discriminator (R1 every 2 steps, no perceptual loss) in
    this process; returns the stage, and per step the autoencoder's training outputs and the discriminator's inputs
    (the fake ones: every other call)."""
    from accelerate.state import AcceleratorState

    config = autoencoder_args.parse_args([
        "--preset", "tiny", "--training_recipe", "release", "--train_data_dir", str(images), "--output_dir",
        str(tmp_path / "run"), "--train_batch_size", "4", "--max_train_steps", str(steps), "--perceptual_weight", "0",
        "--r1_interval", "2", "--validation_steps", "100", "--checkpointing_steps", "100", "--report_to", "none",
        "--max_eval_images", "4", "--validation_fraction", "0.2", *flags,
    ])  # fmt: skip
    monkeypatch.setattr(AutoencoderStage, "finish", lambda *args: None)
    seen = {"autoencoder": [], "discriminator": []}

    def record(module, inputs, output):
        if isinstance(module, BRICSAutoencoder) and module.training and torch.is_tensor(getattr(output, "sample", 0)):
            seen["autoencoder"].append(output.sample.detach().clone())
        elif isinstance(module, StyleGAN2Discriminator):
            seen["discriminator"].append(inputs[0].detach().clone())

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        AcceleratorState._reset_state(reset_partial_state=True)
        stage = AutoencoderStage(config)
        loop.Trainer(config.loop, "test").fit(stage)
    finally:
        handle.remove()
    return stage, seen


def discriminator_steps(stage) -> int:
    """The optimizer steps the discriminator took (Adam's step count of its first weight)."""
    first = next(stage.discriminator.parameters())
    return int(stage.disc_optimizer.state[first]["step"])


def test_by_default_r1_is_in_the_main_step_and_the_discriminator_sees_the_loss_reconstruction(
    tmp_path, random_image_folder, monkeypatch
):
    steps = 4
    stage, seen = train_stage_one(tmp_path, random_image_folder(10), steps, monkeypatch=monkeypatch)
    assert discriminator_steps(stage) == steps  # R1 folded into the main step: one D step per batch
    assert len(seen["autoencoder"]) == steps  # one autoencoder forward per step
    # per step: D(recon) for the autoencoder's adversarial term, then D(real) (R1's on even steps), D(recon)
    fakes = seen["discriminator"][2::3]
    assert len(fakes) == steps
    for recon, fake in zip(seen["autoencoder"], fakes):
        assert torch.equal(recon, fake)  # the reconstruction of the loss, reused
    assert stage.r1_step is None
    assert all(p.dtype == torch.float32 for p in stage.discriminator.parameters())


def test_the_release_step_takes_r1_separately_and_recomputes_the_reconstruction(
    tmp_path, random_image_folder, monkeypatch
):
    steps = 4
    stage, seen = train_stage_one(
        tmp_path,
        random_image_folder(10),
        steps,
        "--r1_separate_step",
        "--disc_recompute_reconstruction",
        monkeypatch=monkeypatch,
    )
    # 4 main steps and R1 at steps 0 and 2: 6 (the release at interval 16: 17 per 16 batches)
    assert discriminator_steps(stage) == steps + steps // 2
    assert stage.r1_step.steps == steps // 2
    # two autoencoder forwards per step: the loss's, then the updated autoencoder's, which D trains on
    assert len(seen["autoencoder"]) == 2 * steps
    second = seen["autoencoder"][1::2]
    for recomputed in second:
        assert any(torch.equal(recomputed, x) for x in seen["discriminator"])
    for first, recomputed in zip(seen["autoencoder"][0::2], second):
        assert not torch.equal(first, recomputed)  # the autoencoder moved between the two forwards


def test_the_recomputation_is_refused_with_gradient_accumulation(capsys, tmp_path):
    with pytest.raises(SystemExit):
        autoencoder_args.parse_args(
            ["--output_dir", str(tmp_path), "--disc_recompute_reconstruction", "--gradient_accumulation_steps", "2"]
        )
    assert "--gradient_accumulation_steps 1" in capsys.readouterr().err


def test_a_separate_step_differentiates_its_shadows_and_steps_the_optimizer_on_them():
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    separate = SeparateStep(module, optimizer)
    module.weight.grad = torch.full_like(module.weight, 7.0)  # the main update's gradient, kept apart
    before = module.weight.detach().clone()
    x = torch.randn(5, 3)
    separate(x).sum().backward()
    assert torch.equal(module.weight.grad, torch.full_like(module.weight, 7.0))
    expected = x.sum(0, keepdim=True)  # d/dW of sum(W x + b)
    torch.testing.assert_close(separate.shadows[0].grad, expected)
    separate.step()
    torch.testing.assert_close(module.weight.detach(), before - expected)
    assert torch.equal(module.weight.grad, torch.full_like(module.weight, 7.0)) and separate.steps == 1
    separate.zero_grad()
    assert all(s.grad is None for s in separate.shadows)


def test_float16_blocks_are_the_highest_resolutions_and_run_in_float32_off_cuda_with_one_warning():
    release = StyleGAN2Discriminator(resolution=256, channel_base=1024, channel_max=16, num_fp16_res=4)
    assert release.fp16_blocks == [True, True, True, True, False, False]  # 256, 128, 64, 32 of 256 ... 8
    assert StyleGAN2Discriminator(resolution=32, channel_base=256, channel_max=8, num_fp16_res=4).fp16_blocks == [
        True, True, True]  # fmt: skip
    torch.manual_seed(0)
    plain = StyleGAN2Discriminator(resolution=32, channel_base=256, channel_max=8)
    half = StyleGAN2Discriminator(resolution=32, channel_base=256, channel_max=8, num_fp16_res=2)
    half.load_state_dict(plain.state_dict())
    assert plain.block_dtypes(torch.device("cuda")) is None
    assert half.block_dtypes(torch.device("cuda")) == [torch.float16, torch.float16, torch.float32]
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with pytest.warns(UserWarning, match="float16 blocks need a CUDA device"):
        out = half(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per discriminator
        assert torch.equal(half(images), out)
    assert torch.equal(out, plain(images))


def test_conv_clamp_bounds_the_convolution_outputs():
    torch.manual_seed(0)
    clamp = 0.05
    disc = StyleGAN2Discriminator(resolution=16, channel_base=128, channel_max=8, conv_clamp=clamp)
    plain = StyleGAN2Discriminator(resolution=16, channel_base=128, channel_max=8)
    plain.load_state_dict(disc.state_dict())
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append((m, o)))
        for m in disc.modules()
        if getattr(m, "clamp", None) is not None
    ]
    assert len(hooks) == 1 + 2 * 2 + 1  # from_rgb, conv0 and conv1 of both blocks, the epilogue's conv (no skips)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    clamped = disc(images)
    for module, output in outputs:
        assert output.abs().max() <= clamp * module.gain + 1e-7
    assert not torch.equal(clamped, plain(images))
    with pytest.raises(ValueError, match="conv_clamp"):
        StyleGAN2Discriminator(resolution=16, conv_clamp=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 blocks run on CUDA (benchmarks/gpu_check.sh)")
def test_float16_blocks_compute_in_half_on_cuda_and_r1_differentiates_through_them():
    from diffusers_brics.training.losses import r1_penalty

    torch.manual_seed(0)
    disc = StyleGAN2Discriminator(
        resolution=64, channel_base=2048, channel_max=64, num_fp16_res=2, conv_clamp=256
    ).cuda()
    dtypes = []
    hooks = [block.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype)) for block in disc.blocks]
    images = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    penalty, logits = r1_penalty(disc, images)
    assert dtypes == [torch.float16, torch.float16, torch.float32, torch.float32]  # 64, 32 of 64 ... 8
    assert logits.dtype == torch.float32 and torch.isfinite(penalty)
    penalty.backward()
    grads = [p.grad for p in disc.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    for hook in hooks:
        hook.remove()
    fp32 = StyleGAN2Discriminator(resolution=64, channel_base=2048, channel_max=64, conv_clamp=256).cuda()
    fp32.load_state_dict(disc.state_dict())
    torch.testing.assert_close(disc(images), fp32(images), rtol=0.05, atol=0.05)
