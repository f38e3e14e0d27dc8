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
from pipelines.latent import LatentDiffusionPipeline
from pipelines.latent import register_with_diffusers as _register_latent

register_with_diffusers()
_register_latent()

__all__ = [
    "SCHEDULERS",
    "AttributeProjection",
    "AttributeTau",
    "CartoonDiffusionPipeline",
    "LatentDiffusionPipeline",
    "denoise",
    "make_scheduler",
]
