"""The names that command lines offer as choices, importable without torch, so that ``--help`` answers at once.

Each tuple lists the keys of a table that lives in a module importing torch (given beside it); tests/test_cli.py
checks that the two agree, so a new preset or scheduler is added to both.
"""

#: `diffusers_brics.models.PRESETS`: the BRICS autoencoder configurations.
AUTOENCODER_PRESETS = ("paper-16x16x16", "paper-16x16x8", "paper-32x32x4", "paper-32x32x8", "paper-64x64x4",
                       "small-32", "small-64", "tiny")
#: `diffusers_brics.training.unet.UNET_PRESETS`: the stage-2 UNet sizes.
UNET_PRESETS = ("paper", "small", "tiny")
#: `diffusers_brics.pipelines.loading.SCHEDULERS`: the samplers a pipeline can be given.
SCHEDULERS = ("ddim", "ddpm", "dpm")
