"""Flow for DVC stage train_vae: the VAE of the latent track (trained here or pretrained); see
tasks/latent/vae.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.latent.config import TrainVaeConfig
from tasks.latent.stages import train_vae_task


@flow(name="train_vae")
def train_vae(shard_dir: str, out_dir: str, metrics_path: str, live_dir: str, params: dict) -> dict:
    return train_vae_task(shard_dir, out_dir, metrics_path, live_dir, TrainVaeConfig.from_params(params, "train_vae"))


if __name__ == "__main__":
    run_stage(train_vae, "train_vae")
