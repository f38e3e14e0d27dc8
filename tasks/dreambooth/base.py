"""The base model a DreamBooth run starts from, its identity, and the check that the subject
latents, the class samples and the base model belong together (same VAE, same base)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipelines import LatentDiffusionPipeline
from pipelines.identity import module_identity
from pipelines.ldm_base import load_latent_base, vae_folder
from tasks.latent.vae import vae_identity
from tasks.shards.dataset import read_manifest


def load_base(base_dir: str | Path) -> LatentDiffusionPipeline:
    """The base latent diffusion model (params `dreambooth_base`: train_ldm's output, or a downloaded
    diffusers LDMPipeline such as CompVis/ldm-celebahq-256; pipelines/ldm_base.py), on the CPU, in
    eval mode."""
    pipe = load_latent_base(base_dir)
    pipe.unet.eval().requires_grad_(False)
    pipe.vae.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_vae_dir(base_dir: str | Path) -> Path:
    """The folder of the base model's own autoencoder (`vae/`, or `vqvae/` in an LDMPipeline folder):
    what encode_subject encodes the subject's photos with."""
    return vae_folder(base_dir)


def base_identity(pipe: LatentDiffusionPipeline) -> dict:
    """{identity, unet, vae}: hashes of the UNet's weights+config and of the VAE (as encode_latents
    records it); `identity` covers both."""
    unet, vae = module_identity(pipe.unet), vae_identity(pipe.vae)
    return {"identity": hashlib.sha256(f"{unet}:{vae}".encode()).hexdigest()[:24], "unet": unet, "vae": vae}


def check_compatible(base: dict, base_dir: str, subject_dir: str, class_dir: str | None) -> None:
    """Subject latents and class samples must come from the base model's VAE, and class samples from
    this base model: a clear error naming both identities, never a silent mix."""
    subject = read_manifest(subject_dir)
    if subject["vae"]["identity"] != base["vae"]:
        raise ValueError(
            f"{subject_dir} was encoded by VAE {subject['vae']['identity']}, but the base model "
            f"{base_dir} decodes with VAE {base['vae']}: re-run encode_subject with the base's VAE"
        )
    if class_dir is None:
        return
    klass = read_manifest(class_dir)
    if klass.get("base", {}).get("identity") != base["identity"]:
        raise ValueError(
            f"{class_dir} was sampled from base model {klass.get('base', {}).get('identity')}, but "
            f"{base_dir} is base model {base['identity']}: re-run sample_class"
        )
    if klass["vae"]["identity"] != subject["vae"]["identity"]:
        raise ValueError(
            f"{class_dir} holds latents of VAE {klass['vae']['identity']}, {subject_dir} of VAE "
            f"{subject['vae']['identity']}: both must come from the base model's VAE"
        )
    if klass["latent_shape"] != subject["latent_shape"]:
        raise ValueError(
            f"{class_dir} latents are {klass['latent_shape']}, {subject_dir} are {subject['latent_shape']}"
        )
