"""Flow for DVC stage train_ldm: unconditional latent diffusion on the cached latents, on the shared
engine; see tasks/latent/train.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.latent.config import TrainLdmConfig
from tasks.latent.train import train_ldm as train

train_ldm_task = stage_task("train_ldm")(train)


@flow(name="train_ldm")
def train_ldm(
    latent_dir: str, vae_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str, params: dict
) -> str:
    train_ldm_task(
        latent_dir,
        vae_dir,
        model_dir,
        checkpoint_dir,
        live_dir,
        metrics_path,
        TrainLdmConfig.from_params(params, "train_ldm"),
    )
    return model_dir


if __name__ == "__main__":
    run_stage(train_ldm, "train_ldm")
