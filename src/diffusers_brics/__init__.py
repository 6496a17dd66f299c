"""diffusers-brics: BRICS bi-level image representations for the Hugging Face diffusers ecosystem."""

from .models import PRESETS, BRICSAutoencoder, BRICSEncoderOutput, MultiResolutionFeatureGrid

__version__ = "0.1.0"

__all__ = ["BRICSAutoencoder", "BRICSEncoderOutput", "MultiResolutionFeatureGrid", "PRESETS", "__version__"]
