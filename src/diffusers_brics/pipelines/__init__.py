"""Pipelines built on BRICS key codes."""

import diffusers

from .base_pipeline import BRICSDiffusionPipeline
from .pipeline_brics import BRICSPipeline
from .pipeline_brics_text2img import BRICSTextToImagePipeline
from .sampling import default_scheduler

# `DiffusionPipeline.from_pretrained(folder)` looks the `_class_name` of model_index.json up in the diffusers
# namespace; registering the classes there lets it load saved BRICS pipelines once diffusers_brics is imported.
for _pipeline in (BRICSPipeline, BRICSTextToImagePipeline):
    if not hasattr(diffusers, _pipeline.__name__):
        setattr(diffusers, _pipeline.__name__, _pipeline)

__all__ = ["BRICSDiffusionPipeline", "BRICSPipeline", "BRICSTextToImagePipeline", "default_scheduler"]
