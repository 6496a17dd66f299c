"""BRICS model components: feature grids, retrieval, encoder, decoder and the autoencoder.

The classes below are imported on first use, so that a light module of this package (`model_types`,
`autoencoder_presets`: plain tables the command lines read for their help) imports without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_imports import lazy_attributes

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

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
