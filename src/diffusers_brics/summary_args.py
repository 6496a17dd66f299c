"""Parameters per component and decode multiply-accumulates of a BRICS autoencoder; for the paper's presets, beside
the paper's Table 3 and the authors' release.

    brics info paper-64x64x4          a preset (the default; PRESET below lists them)
    brics info --all                  every preset
    brics info --model M              a trained model, as the other commands take it: a pipeline, an autoencoder or
                                      a training output, local folder or Hub repo id
    brics info --config CONFIG        a BRICSAutoencoder configuration: a config.json or the folder holding it

(`python -m diffusers_brics.summary` is the same command.)
"""

# The command line alone, importable without torch (so that `--help` answers at once); `summary` does the counting.

from __future__ import annotations

import argparse

from .console import ArgumentParser
from .names import AUTOENCODER_PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="brics info", description=__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("preset", nargs="?", default="paper-64x64x4", choices=AUTOENCODER_PRESETS, metavar="PRESET",
                       help=f"the configuration to summarise: {', '.join(AUTOENCODER_PRESETS)}")
    which.add_argument("--all", action="store_true", help="summarise every preset")
    which.add_argument("--model", help="a trained BRICS model: a pipeline, an autoencoder or a training output, local "
                       "folder or Hub repo id")
    which.add_argument("--config", help="a saved BRICSAutoencoder configuration (its config.json, or the folder "
                       "holding it) instead of a preset")
    return parser
