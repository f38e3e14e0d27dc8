"""Diffusers models and pipelines of this project: inference only, importable alone."""
from pipelines.cartoon import (
    SCHEDULERS,
    AttributeProjection,
    AttributeTau,
    CartoonDiffusionPipeline,
    denoise,
    make_scheduler,
)
from pipelines.latent import LatentDiffusionPipeline
from pipelines.outputs import register_with_diffusers

register_with_diffusers(CartoonDiffusionPipeline, LatentDiffusionPipeline)

__all__ = [
    "SCHEDULERS",
    "AttributeProjection",
    "AttributeTau",
    "CartoonDiffusionPipeline",
    "LatentDiffusionPipeline",
    "denoise",
    "make_scheduler",
]
