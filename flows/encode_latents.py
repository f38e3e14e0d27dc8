"""Flow for DVC stage encode_latents: aligned face shards -> latent shards (resumable); see
tasks/latent/encode.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.latent.config import EncodeLatentsConfig
from tasks.latent.stages import encode_latents_task


@flow(name="encode_latents")
def encode_latents(aligned_dir: str, vae_dir: str, out_dir: str, params: dict) -> dict:
    return encode_latents_task(aligned_dir, vae_dir, out_dir, EncodeLatentsConfig.from_params(params, "encode_latents"))


if __name__ == "__main__":
    run_stage(encode_latents, "encode_latents")
