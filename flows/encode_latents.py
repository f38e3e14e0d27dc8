"""Flow for DVC stage encode_latents: aligned shards -> VAE posterior mean and std in shards,
resumable per shard; see tasks/latent/encode.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.latent.config import EncodeLatentsConfig
from tasks.latent.encode import encode_latents as encode
from tasks.reporting.log import get_logger


@stage_task("encode_latents")
def encode_latents_task(aligned_dir: str, vae_dir: str, out_dir: str, config: EncodeLatentsConfig) -> dict:
    """Encode the aligned shards not yet encoded by this VAE; returns the latent manifest's summary."""
    params = config.to_dict()
    manifest = encode(aligned_dir, vae_dir, out_dir, log=get_logger().info, params=params, **params)
    return {
        "counts": manifest["counts"],
        "latent_shape": manifest["latent_shape"],
        "vae_identity": manifest["vae"]["identity"],
    }


@flow(name="encode_latents")
def encode_latents(aligned_dir: str, vae_dir: str, out_dir: str, params: dict) -> dict:
    return encode_latents_task(aligned_dir, vae_dir, out_dir, EncodeLatentsConfig.from_params(params, "encode_latents"))


if __name__ == "__main__":
    run_stage(encode_latents, "encode_latents")
