"""diffusers-brics: BRICS bi-level image representations for the Hugging Face diffusers ecosystem.

The classes below are imported on first use (``from diffusers_brics import BRICSPipeline`` works as usual), so that
importing a light module of the package, such as the `brics` command line (`diffusers_brics.cli`), does not import
torch and diffusers first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy_imports import lazy_attributes

__version__ = "0.2.0"

# public name -> the subpackage that defines it
_LAZY = {
    "BRICSAutoencoder": ".models",
    "BRICSAutoencoderOutput": ".models",
    "BRICSEncoderOutput": ".models",
    "MultiResolutionFeatureGrid": ".models",
    "PRESETS": ".models",
    "BRICSPipeline": ".pipelines",
    "BRICSTextToImagePipeline": ".pipelines",
}

__all__ = [
    "BRICSAutoencoder",
    "BRICSAutoencoderOutput",
    "BRICSEncoderOutput",
    "BRICSPipeline",
    "BRICSTextToImagePipeline",
    "MultiResolutionFeatureGrid",
    "PRESETS",
    "__version__",
]

if TYPE_CHECKING:
    from .models import (
        PRESETS,
        BRICSAutoencoder,
        BRICSAutoencoderOutput,
        BRICSEncoderOutput,
        MultiResolutionFeatureGrid,
    )
    from .pipelines import BRICSPipeline, BRICSTextToImagePipeline

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
