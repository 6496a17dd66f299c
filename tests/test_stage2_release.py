"""Stage 2 as the BRICS release trains it (imagen-pytorch 1.25.2's trainer with ema-pytorch): the ``release``
recipe's optimizer, learning-rate schedule, clipping and EMA, applied by a run; ema-pytorch's EMA cadence and decay
against a hand computation; Adam against AdamW; the ``paper`` UNet's attention placed by level at any code size."""

import pytest
import torch
from diffusers import UNet2DModel

from diffusers_brics.training import diffusion_args, loop
from diffusers_brics.training.diffusion import DiffusionStage
from diffusers_brics.training.ema import CadencedEMA
from diffusers_brics.training.unet import UNET_PRESETS, block_types


def test_the_release_recipe_sets_the_release_optimizer_and_ema_and_the_short_one_keeps_its_own():
    release = diffusion_args.parse_args(["--autoencoder", "x", "--unet_preset", "paper"])
    assert release.training_recipe == "release"
    assert (release.optimizer, release.learning_rate, release.adam_beta1, release.adam_beta2) == (
        "adam",
        8e-5,
        0.9,
        0.99,
    )
    assert release.adam_weight_decay == 0.0
    loop_settings, ema = release.loop, release.loop.ema
    assert (loop_settings.lr_scheduler, loop_settings.lr_warmup_steps, loop_settings.max_grad_norm) == (
        "constant",
        0,
        None,
    )
    assert (ema.ema_schedule, ema.ema_max_decay, ema.ema_power) == ("ema-pytorch", 0.9999, 2 / 3)
    assert (ema.ema_update_every, ema.ema_update_after_step) == (10, 100)
    short = diffusion_args.parse_args(["--autoencoder", "x"])
    assert (short.training_recipe, short.optimizer, short.loop.ema.ema_schedule) == ("short", "adamw", "warmup")
    given = diffusion_args.parse_args(
        ["--autoencoder", "x", "--unet_preset", "paper", "--optimizer", "adamw", "--ema_update_every", "1"]
    )
    assert (given.optimizer, given.loop.ema.ema_update_every) == ("adamw", 1)


def test_ema_cadence_flags_are_refused_with_another_schedule(capsys):
    with pytest.raises(SystemExit):
        diffusion_args.parse_args(["--autoencoder", "x", "--ema_update_every", "5"])  # short: the warmup schedule
    assert "--ema_update_every applies to --ema_schedule ema-pytorch" in capsys.readouterr().err


def test_a_release_run_applies_adam_a_constant_rate_no_clipping_and_the_cadenced_ema(
    tmp_path, autoencoder, random_image_folder, monkeypatch
):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    made, prepared, clipped = [], [], []
    make_ema, prepare = loop.make_ema, loop.Trainer._prepare
    monkeypatch.setattr(loop, "make_ema", lambda *args: made.append(make_ema(*args)) or made[-1])
    monkeypatch.setattr(
        loop.Trainer, "_prepare", lambda self, parts: prepared.append(prepare(self, parts)) or prepared[-1]
    )
    clip = Accelerator.clip_grad_norm_
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda self, *a, **k: clipped.append(1) or clip(self, *a, **k))
    steps = 12
    config = diffusion_args.parse_args([
        "--autoencoder", str(autoencoder), "--train_data_dir", str(random_image_folder(8)), "--output_dir",
        str(tmp_path / "run"), "--unet_preset", "tiny", "--training_recipe", "release", "--train_batch_size", "4",
        "--max_train_steps", str(steps), "--validation_steps", "100", "--checkpointing_steps", "100",
        "--num_validation_images", "1", "--num_inference_steps", "2", "--report_to", "none",
    ])  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    loop.Trainer(config.loop, "test").fit(DiffusionStage(config))
    _, optimizer, _, scheduler, _, _ = prepared[0]
    adam = optimizer.optimizer  # accelerate's wrapper
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.0 and group["lr"] == 8e-5
    assert scheduler.get_last_lr() == [8e-5]  # constant after the run's steps, no warm-up
    assert clipped == []
    ema = made[0]
    assert type(ema) is CadencedEMA and (ema.update_every, ema.update_after_step, ema.decay) == (10, 100, 0.9999)
    assert ema.power == 2 / 3 and ema.optimization_step == steps


def linear_with_ema(**kwargs) -> tuple[torch.nn.Linear, CadencedEMA]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return model, CadencedEMA(model.parameters(), **kwargs)


def test_ema_pytorch_cadence_copies_then_averages_every_tenth_step_and_holds_between():
    model, ema = linear_with_ema(update_every=10, update_after_step=100, decay=0.9999, power=2 / 3)
    params = list(model.parameters())
    previous = [s.clone() for s in ema.shadow_params]
    for k in range(1, 161):  # optimisation step k
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        ema.step(params)
        shadow = [s.clone() for s in ema.shadow_params]
        if (k - 1) % 10:  # between touches: unchanged
            assert all(torch.equal(s, b) for s, b in zip(shadow, previous)), k
        elif k <= 101 or k == 111:  # copies up to step 101, and at ema-pytorch's first average (its `initted`)
            assert all(torch.equal(s, p) for s, p in zip(shadow, params)), k
        else:  # ema-pytorch: epoch = k - 100 - 1, decay = 1 - (1 + epoch) ** -(2 / 3)
            decay = 1 - (1 + (k - 101)) ** (-2 / 3)
            for s, b, p in zip(shadow, previous, params):
                torch.testing.assert_close(s, decay * b + (1 - decay) * p, rtol=1e-6, atol=1e-6)
        previous = shadow
    assert ema.optimization_step == 160


def test_ema_pytorch_decay_against_a_hand_computation():
    _, ema = linear_with_ema(update_every=10, update_after_step=100, decay=0.9999, power=2 / 3)
    assert ema.get_decay(101) == 0.0
    assert ema.get_decay(121) == pytest.approx(1 - 21 ** (-2 / 3))  # 21 ** (2 / 3) = 7.6117
    assert ema.get_decay(121) == pytest.approx(1 - 1 / 7.6117, abs=1e-5)
    assert ema.get_decay(10**7) == 0.9999  # capped at beta
    _, every_step = linear_with_ema(update_every=1, update_after_step=0, decay=0.9999, power=2 / 3)
    model = torch.nn.Linear(3, 2)
    for _ in range(3):
        every_step.step(model.parameters())
    assert every_step.cur_decay_value == pytest.approx(1 - (1 + 2) ** (-2 / 3))  # steps 1, 2 copy; step 3: epoch 2
    with pytest.raises(ValueError, match="update_every"):
        linear_with_ema(update_every=0)


def test_adam_and_adamw_take_identical_steps_without_weight_decay():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    adam = torch.optim.Adam(a.parameters(), lr=8e-5, betas=(0.9, 0.99), weight_decay=0.0)
    adamw = torch.optim.AdamW(b.parameters(), lr=8e-5, betas=(0.9, 0.99), weight_decay=0.0)
    for _ in range(5):
        x = torch.randn(16, 8)
        for model, optimizer in ((a, adam), (b, adamw)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # with weight decay they differ: AdamW decays the weights, Adam adds the decay to the gradient
    c = torch.nn.Linear(8, 4)
    d = torch.nn.Linear(8, 4)
    d.load_state_dict(c.state_dict())
    for model, cls in ((c, torch.optim.Adam), (d, torch.optim.AdamW)):
        optimizer = cls(model.parameters(), lr=1e-2, weight_decay=0.1)
        model(torch.ones(2, 8)).sum().backward()
        optimizer.step()
    assert not torch.equal(c.weight, d.weight)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_the_paper_unet_attends_on_levels_two_to_four_at_any_code_size(size):
    down, up = block_types("paper", size)
    assert down == ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert up == ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")  # the mirror image
    assert block_types("paper", size, cross_attention=True)[0][1] == "CrossAttnDownBlock2D"
    # the small presets still place attention by the level's size: at 4x4 only
    small = block_types("small", size)[0]
    assert [i for i, kind in enumerate(small) if kind.startswith("Attn")] == [i for i in range(3) if size >> i == 4]


def test_the_paper_unet_has_the_same_parameters_at_every_code_size():
    preset = UNET_PRESETS["paper"]
    channels = preset["block_out_channels"]
    counts = {}
    for size in (16, 32, 64):
        down, up = block_types("paper", size)
        with torch.device("meta"):
            unet = UNet2DModel(
                sample_size=size,
                in_channels=4,
                out_channels=4,
                block_out_channels=channels,
                layers_per_block=2,
                down_block_types=down,
                up_block_types=up,
                norm_num_groups=32,
                attention_head_dim=channels[0] // 8,
            )
        counts[size] = sum(p.numel() for p in unet.parameters())
        # each attention layer: group norm (2C), q, k, v and the output projection (4 (C^2 + C))
        for level, width in enumerate(channels):
            attention = sum(
                p.numel() for p in getattr(unet.down_blocks[level], "attentions", torch.nn.ModuleList()).parameters()
            )
            assert attention == (0 if level == 0 else 2 * (4 * width**2 + 6 * width)), (size, level)
    assert counts[16] == counts[32] == counts[64]
    assert 300e6 < counts[64] < 700e6, counts  # hundreds of millions, as imagen-pytorch's UNet at dim 256
