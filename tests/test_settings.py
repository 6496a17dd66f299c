"""The trainings' settings (`diffusers_brics.training.config`): the dataclass fields are the one source of the
defaults. The command lines read them, the recipes change them only where the command line leaves them out, and
the defaults that follow from other settings are resolved by the settings classes themselves, so that a config
built in Python equals the one the command line builds."""

import argparse

import pytest

from diffusers_brics.training import autoencoder_args, diffusion_args
from diffusers_brics.training.config import (
    AutoencoderLossConfig,
    AutoencoderTrainingConfig,
    DiffusionTrainingConfig,
    field_defaults,
)
from diffusers_brics.training.flags import read_field_defaults


@pytest.mark.parametrize(
    ("module", "settings"),
    [(autoencoder_args, AutoencoderTrainingConfig), (diffusion_args, DiffusionTrainingConfig)],
)
def test_every_flag_is_a_field_whose_default_the_parser_reads(module, settings):
    parser = module.build_parser()
    defaults = field_defaults(settings)
    deferred = parser.get_default("_recipe_fallback")  # the flags a recipe may set: their fallback is the field's
    flags = [action for action in parser._actions if action.dest != "help"]
    assert len(flags) > 50
    for action in flags:
        if action.required:
            continue
        assert action.dest in defaults, action.dest
        if action.dest in deferred:
            assert action.default is argparse.SUPPRESS and deferred[action.dest] == defaults[action.dest], action.dest
        else:
            assert action.default == defaults[action.dest], action.dest


def test_a_flag_without_a_field_is_refused():
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--not_a_setting", type=float, default=1.0)
    with pytest.raises(TypeError, match="--not_a_setting is not a field of AutoencoderTrainingConfig"):
        read_field_defaults(parser, AutoencoderTrainingConfig)


def test_the_stages_loop_defaults_are_their_own():
    autoencoder, diffusion = field_defaults(AutoencoderTrainingConfig), field_defaults(DiffusionTrainingConfig)
    assert (autoencoder["output_dir"], autoencoder["ema_schedule"], autoencoder["ema_max_decay"]) == (
        "brics-autoencoder",
        "stylegan",
        0.999,
    )
    assert (diffusion["output_dir"], diffusion["train_batch_size"], diffusion["lr_warmup_steps"]) == (
        "brics-diffusion",
        64,
        500,
    )
    assert (diffusion["ema_schedule"], diffusion["max_grad_norm"], diffusion["validation_steps"]) == (
        "warmup",
        1.0,
        1000,
    )
    assert "autoencoder" not in diffusion  # required


@pytest.mark.parametrize(
    "argv",
    [
        ["--training_recipe", "release"],
        ["--training_recipe", "release", "--model_type", "autoencoderkl", "--preset", "tiny"],
        ["--training_recipe", "release", "--model_type", "vqmodel", "--preset", "tiny", "--learning_rate", "1e-4"],
    ],
)
def test_stage_one_settings_built_in_python_equal_the_command_lines(argv):
    from_command_line = autoencoder_args.parse_args(argv)
    flags = dict(zip(argv[::2], argv[1::2]))
    in_python = AutoencoderTrainingConfig(
        training_recipe="release",
        model_type=flags.get("--model_type", "brics"),
        preset=flags.get("--preset", "small-32"),
        learning_rate=float(flags.get("--learning_rate", 2e-3)),
    )
    assert from_command_line == in_python


def test_stage_two_settings_built_in_python_equal_the_command_lines():
    release = diffusion_args.TRAINING_RECIPES["release"]
    expected = DiffusionTrainingConfig(
        autoencoder="vae",
        training_recipe="release",
        learning_rate=release["learning_rate"],
        optimizer=release["optimizer"],
        adam_beta2=release["adam_beta2"],
    )
    loop, ema = expected.loop, expected.loop.ema
    loop.lr_warmup_steps, loop.lr_scheduler, loop.max_grad_norm = 0, "constant", None
    ema.ema_max_decay, ema.ema_power = release["ema_max_decay"], release["ema_power"]
    ema.ema_schedule = release["ema_schedule"]
    assert diffusion_args.parse_args(["--autoencoder", "vae", "--training_recipe", "release"]) == expected


@pytest.mark.parametrize(
    ("model_type", "kl_weight", "kl_reduction"),
    [("brics", 0.0, "mean"), ("autoencoderkl", 1e-6, "sum"), ("vqmodel", 0.0, "mean")],
)
def test_the_kl_term_follows_the_model_type(model_type, kl_weight, kl_reduction):
    settings = AutoencoderTrainingConfig(model_type=model_type)
    assert (settings.loss.kl_weight, settings.loss.kl_reduction) == (kl_weight, kl_reduction)
    given = AutoencoderTrainingConfig(model_type=model_type, loss=AutoencoderLossConfig(kl_weight=0.5))
    assert given.loss.kl_weight == 0.5


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (dict(), dict(snr_gamma=0.0, conditioning_dropout_prob=0.0, validation_guidance_scale=1.0, resolution=None)),
        (dict(schedule="cosine"), dict(snr_gamma=5.0)),
        (dict(snr_gamma=2.0, schedule="cosine"), dict(snr_gamma=2.0)),
        (dict(caption_column="text"), dict(conditioning_dropout_prob=0.1, validation_guidance_scale=3.0)),
        (dict(class_column="label", conditioning_dropout_prob=0.2), dict(validation_guidance_scale=3.0)),
        (dict(caption_column="text", validation_guidance_scale=5.0), dict(validation_guidance_scale=5.0)),
        (dict(autoencoder="none"), dict(resolution=32)),
        (dict(autoencoder="pixels", resolution=16), dict(resolution=16)),
    ],
)
def test_stage_two_defaults_that_follow_from_other_settings(settings, expected):
    resolved = DiffusionTrainingConfig(**{"autoencoder": "vae", **settings})
    assert {name: getattr(resolved, name) for name in expected} == expected



def test_the_learning_rate_schedules_are_diffusers_own():
    from diffusers.optimization import SchedulerType

    from diffusers_brics.training.flags import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {schedule.value for schedule in SchedulerType}
    assert {"constant", "cosine", "linear"} <= set(LR_SCHEDULERS)
