"""Flow for DVC stage train_vae: the face track's VAE, trained here or loaded pretrained; see
tasks/latent/train_vae.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.latent.config import TrainVaeConfig
from tasks.latent.train_vae import prepare_vae
from tasks.reporting.log import get_logger
from tasks.reporting.model_card import write_model_card
from tasks.reporting.reconstructions import save_reconstructions


@stage_task("train_vae")
def train_vae_task(
    shard_dir: str,
    out_dir: str,
    metrics_path: str,
    live_dir: str | None,
    checkpoint_dir: str | None,
    config: TrainVaeConfig,
) -> dict:
    """Obtain the VAE (`source`: train | local folder | hub id), save it to `out_dir`; returns the metrics."""
    metrics = prepare_vae(
        shard_dir, out_dir, metrics_path, live_dir, config, checkpoint_dir=checkpoint_dir, log=get_logger().info
    )
    if config.source != "train" and live_dir:  # a trained VAE's grid comes from its training
        save_reconstructions(out_dir, shard_dir, live_dir, config.resolution)
    write_model_card(
        out_dir,
        stage="train_vae",
        params=config.to_dict(),
        metrics_path=metrics_path,
        data_dirs=[shard_dir],
        base_model=None if config.source == "train" else config.source,
    )
    return metrics


@flow(name="train_vae")
def train_vae(
    shard_dir: str, out_dir: str, metrics_path: str, live_dir: str, checkpoint_dir: str, params: dict
) -> dict:
    return train_vae_task(
        shard_dir, out_dir, metrics_path, live_dir, checkpoint_dir, TrainVaeConfig.from_params(params, "train_vae")
    )


if __name__ == "__main__":
    run_stage(train_vae, "train_vae")
