"""BRICS model components: feature grids, retrieval, encoder, decoder and the autoencoder."""

from .autoencoder_brics import BRICSAutoencoder
from .autoencoder_outputs import BRICSAutoencoderOutput, BRICSEncoderOutput
from .autoencoder_presets import PRESETS
from .decoder import BRICSDecoder
from .encoder import KeyCodeEncoder
from .feature_grid import MultiResolutionFeatureGrid
from .retrieval import KeyCodeRetrieval

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
