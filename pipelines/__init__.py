"""Diffusers models and pipelines of this project: inference only, importable alone."""
from pipelines.cartoon import (
    SCHEDULERS,
    AttributeProjection,
    AttributeTau,
    CartoonDiffusionPipeline,
    denoise,
    make_scheduler,
    register_with_diffusers,
)

register_with_diffusers()

__all__ = [
    "SCHEDULERS",
    "AttributeProjection",
    "AttributeTau",
    "CartoonDiffusionPipeline",
    "denoise",
    "make_scheduler",
]
