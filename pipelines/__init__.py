"""Diffusers models and pipelines of this project: inference only, importable alone.

Load a trained model through its class: `CartoonDiffusionPipeline.from_pretrained("models/cartoon")`,
`LatentDiffusionPipeline.from_pretrained("models/ldm")`. Nothing is patched into diffusers.
"""

from pipelines.attribute_classifier import AttributeClassifier
from pipelines.autoencoder import PatchAutoencoderKL
from pipelines.cartoon import AttributeProjection, AttributeTau, CartoonDenoiser, CartoonDiffusionPipeline, denoise
from pipelines.latent import LatentDiffusionPipeline
from pipelines.portable import save_portable
from pipelines.schedulers import SCHEDULERS, make_scheduler

__all__ = [
    "SCHEDULERS",
    "AttributeClassifier",
    "AttributeProjection",
    "AttributeTau",
    "CartoonDenoiser",
    "CartoonDiffusionPipeline",
    "LatentDiffusionPipeline",
    "PatchAutoencoderKL",
    "denoise",
    "make_scheduler",
    "save_portable",
]
