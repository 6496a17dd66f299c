"""BRICS model components: feature grids, retrieval, encoder, decoder and the autoencoder.

The classes below are imported on first use, so that a light module of this package (`model_types`,
`autoencoder_presets`: plain tables the command lines read for their help) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_LAZY = {
    "BRICSAutoencoder": ".autoencoder_brics",
    "BRICSAutoencoderOutput": ".autoencoder_outputs",
    "BRICSEncoderOutput": ".autoencoder_outputs",
    "BRICSDecoder": ".decoder",
    "KeyCodeEncoder": ".encoder",
    "KeyCodeRetrieval": ".retrieval",
    "MultiResolutionFeatureGrid": ".feature_grid",
    "PRESETS": ".autoencoder_presets",
}

__all__ = [
    "BRICSAutoencoder",
    "BRICSAutoencoderOutput",
    "BRICSDecoder",
    "BRICSEncoderOutput",
    "KeyCodeEncoder",
    "KeyCodeRetrieval",
    "MultiResolutionFeatureGrid",
    "PRESETS",
]

if TYPE_CHECKING:
    from .autoencoder_brics import BRICSAutoencoder
    from .autoencoder_outputs import BRICSAutoencoderOutput, BRICSEncoderOutput
    from .autoencoder_presets import PRESETS
    from .decoder import BRICSDecoder
    from .encoder import KeyCodeEncoder
    from .feature_grid import MultiResolutionFeatureGrid
    from .retrieval import KeyCodeRetrieval


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
