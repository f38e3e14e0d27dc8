"""Prefect tasks of the latent track's stages; the work lives in vae.py, encode.py and train.py.

Naming rule: the task that runs stage X is `X_task`, named "X" in Prefect. No caching by Prefect:
DVC decides what is stale, and resumption inside a stage is by fingerprints on disk.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.log import get_logger
from tasks.latent.config import EncodeLatentsConfig, TrainLdmConfig, TrainVaeConfig


@task(name="train_vae", cache_policy=NO_CACHE)
def train_vae_task(shard_dir: str, out_dir: str, metrics_path: str, live_dir: str | None,
                   config: TrainVaeConfig) -> dict:
    """Obtain the VAE (`source`: train | local folder | hub id), save it to `out_dir`; returns the metrics."""
    from tasks.latent.vae import prepare_vae

    return prepare_vae(shard_dir, out_dir, metrics_path, live_dir, config, log=get_logger().info)


@task(name="encode_latents", cache_policy=NO_CACHE)
def encode_latents_task(aligned_dir: str, vae_dir: str, out_dir: str, config: EncodeLatentsConfig) -> dict:
    """Encode the aligned shards not yet encoded by this VAE; returns the latent manifest's summary."""
    from tasks.latent.encode import encode_latents

    params = config.to_dict()
    manifest = encode_latents(aligned_dir, vae_dir, out_dir, log=get_logger().info, params=params, **params)
    return {"counts": manifest["counts"], "latent_shape": manifest["latent_shape"],
            "vae_identity": manifest["vae"]["identity"]}


@task(name="train_ldm", cache_policy=NO_CACHE)
def train_ldm_task(latent_dir: str, vae_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str,
                   metrics_path: str, config: TrainLdmConfig) -> str:
    """Train the latent diffusion model; returns the model folder (diffusers format, with its code)."""
    from tasks.latent.train import train_ldm

    summary = train_ldm(latent_dir, vae_dir, model_dir, checkpoint_dir, live_dir, metrics_path, config)
    if summary is not None:
        get_logger().info(f"train_ldm: {summary['steps']} steps; final loss {summary['final_loss']}; "
                          f"{summary['run']['samples_per_second'] or 0:.1f} samples/s; memory "
                          f"{summary['run']['memory_anatomy']['total_mb']:.1f} MB predicted")
    return model_dir
