"""diffusers-brics: BRICS bi-level image representations for the Hugging Face diffusers ecosystem.

The classes below are imported on first use (``from diffusers_brics import BRICSPipeline`` works as usual), so that
importing a light module of the package, such as the `brics` command line (`diffusers_brics.cli`), does not import
torch and diffusers first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
