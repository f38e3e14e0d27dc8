"""Prefect tasks of the latent track's stages (the work lives in vae.py and encode.py)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.log import get_logger


@task(cache_policy=NO_CACHE)
def train_vae_task(shard_dir: str, out_dir: str, metrics_path: str, live_dir: str | None, **params) -> dict:
    """Obtain the VAE (`source`: train | local folder | hub id), save it to `out_dir`; returns the metrics."""
    from tasks.latent.vae import prepare_vae

    log = get_logger()
    return prepare_vae(shard_dir, out_dir, metrics_path, live_dir, log=log.info, **params)


@task(cache_policy=NO_CACHE)  # resumption is by shard fingerprints on disk, never by Prefect's cache
def encode_latents_task(aligned_dir: str, vae_dir: str, out_dir: str, **params) -> dict:
    """Encode the aligned shards not yet encoded by this VAE; returns the latent manifest."""
    from tasks.latent.encode import encode_latents

    log = get_logger()
    manifest = encode_latents(aligned_dir, vae_dir, out_dir, log=log.info, params=dict(params), **params)
    return {"counts": manifest["counts"], "latent_shape": manifest["latent_shape"],
            "vae_identity": manifest["vae"]["identity"]}
