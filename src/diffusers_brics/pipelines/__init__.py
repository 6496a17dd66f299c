"""Pipelines built on BRICS key codes."""

import diffusers

from .pipeline_brics import BRICSPipeline, default_scheduler

# `DiffusionPipeline.from_pretrained(folder)` looks the `_class_name` of model_index.json up in the diffusers
# namespace; registering the class there lets it load saved BRICS pipelines once diffusers_brics is imported.
if not hasattr(diffusers, "BRICSPipeline"):
    setattr(diffusers, "BRICSPipeline", BRICSPipeline)

__all__ = ["BRICSPipeline", "default_scheduler"]
