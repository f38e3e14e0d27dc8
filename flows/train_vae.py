"""Flow for DVC stage train_vae: the VAE of the latent track (trained here or pretrained); see
tasks/latent/vae.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.latent.stages import train_vae_task


@flow(name="train_vae")
def train_vae(shard_dir: str, out_dir: str, metrics_path: str, live_dir: str | None = None, source: str = "train",
              subfolder: str | None = None, resolution: int = 64, model: dict | None = None,
              training: dict | None = None, eval_batch_size: int = 16, eval_images: int | None = 2000,
              device: str = "auto") -> dict:
    return train_vae_task(shard_dir, out_dir, metrics_path, live_dir, source=source, subfolder=subfolder,
                          resolution=resolution, model=model, training=training, eval_batch_size=eval_batch_size,
                          eval_images=eval_images, device=device)


if __name__ == "__main__":
    run_stage(train_vae, "train_vae")
