"""diffusers-brics: BRICS bi-level image representations for the Hugging Face diffusers ecosystem."""

from .models import PRESETS, BRICSAutoencoder, BRICSAutoencoderOutput, BRICSEncoderOutput, MultiResolutionFeatureGrid
from .pipelines import BRICSPipeline, BRICSTextToImagePipeline

__version__ = "0.1.0"

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
