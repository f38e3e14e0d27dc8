"""Flow for DVC stage train_ldm: unconditional latent diffusion on the cached latents; see
tasks/latent/train.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.latent.train import train_ldm_task


@flow(name="train_ldm")
def train_ldm(latent_dir: str, vae_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str,
              data: dict | None = None, model: dict | None = None, training: dict | None = None,
              samples: dict | None = None, num_processes: int = 1) -> str:
    return train_ldm_task(latent_dir, vae_dir, model_dir, checkpoint_dir, live_dir, metrics_path, data=data,
                          model=model, training=training, samples=samples, num_processes=num_processes)


if __name__ == "__main__":
    run_stage(train_ldm, "train_ldm")
