"""Stage train_ldm: an unconditional `UNet2DModel` on cached VAE latents, trained by the shared engine.

Each step draws z = (mean + std * eps) * scaling_factor from the latent shards (eps drawn by the
loader from (seed, epoch, key): a resumed run sees the same z), and the engine (tasks/training) does
the rest: noise, timesteps, loss, AdamW + warmup, EMA, checkpoints and exact resume, dvclive
curves, the memory anatomy, and a per-epoch sample grid, here decoded through the VAE with a fixed
seed. The saved model is a `LatentDiffusionPipeline` (unet + vae + scheduler) in diffusers format.

The params section has `data`, `model`, `training` (the engine: tasks/training/config.py) and
`samples`. Several processes: `num_processes` > 1 re-launches this module under `accelerate
launch`; each process reads its own latent shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines import LatentDiffusionPipeline, make_scheduler, save_portable
from tasks.latent.config import LdmModelConfig, TrainLdmConfig
from tasks.latent.loader import latent_loader
from tasks.latent.vae import load_vae, vae_identity
from tasks.processes.launch import config_job_main, run_or_launch
from tasks.reporting.grid import square_grid
from tasks.reporting.model_card import last_grid, write_model_card
from tasks.reporting.timings import write_metrics
from tasks.shards.dataset import read_manifest
from tasks.tracking.identity import data_identity, identity
from tasks.training.diffusion import DiffusionSpec
from tasks.training.engine import train


def build_unet(model: LdmModelConfig, latent_shape: list[int]):
    from diffusers import UNet2DModel

    c, h, w = latent_shape
    if h != w:
        raise ValueError(f"square latents expected, got {latent_shape}")
    return UNet2DModel(
        sample_size=h,
        in_channels=c,
        out_channels=c,
        block_out_channels=tuple(model.block_out_channels),
        layers_per_block=model.layers_per_block,
        down_block_types=tuple(model.down_block_types),
        up_block_types=tuple(model.up_block_types),
        attention_head_dim=model.attention_head_dim,
        norm_num_groups=model.norm_num_groups,
    )


def ldm_spec(latent_dir: str, vae_dir: str, config: TrainLdmConfig) -> DiffusionSpec:
    data, model, samples, cfg = config.data, config.model, config.samples, config.training
    manifest = read_manifest(latent_dir)
    vae = load_vae(vae_dir)
    if manifest["vae"]["identity"] != vae_identity(vae):  # another VAE's latents: a check before any deletion
        raise ValueError(
            f"{latent_dir} was encoded by VAE {manifest['vae']['identity']}, but {vae_dir} is VAE "
            f"{vae_identity(vae)}: re-run encode_latents"
        )
    scale = float(vae.config.scaling_factor)
    if abs(scale - float(manifest["vae"]["scaling_factor"])) > 1e-6 * max(1.0, abs(scale)):
        raise ValueError(
            f"{vae_dir}'s scaling factor {scale} differs from the one {latent_dir} was encoded with "
            f"({manifest['vae']['scaling_factor']}): re-run encode_latents"
        )
    shape = manifest["latent_shape"]
    loader_kw = dict(
        batch_size=data.batch_size,
        shuffle_buffer=data.shuffle_buffer,
        workers=data.workers,
        seed=cfg.seed,
        flip_prob=data.flip_prob,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = len(latent_loader(latent_dir, "train", epoch=0, rank=0, world_size=world, **loader_kw))

    def make_loader(epoch: int, rank: int, world_size: int):
        return latent_loader(latent_dir, "train", epoch=epoch, rank=rank, world_size=world_size, **loader_kw)

    def prepare(batch, device):
        return batch["latent"].to(device) * scale, None

    def sample_grid(unet, noise_scheduler, epoch: int):
        pipe = LatentDiffusionPipeline(
            unet=unet, vae=vae.to(unet.device), scheduler=make_scheduler(samples.scheduler, noise_scheduler.config)
        )
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator(device=unet.device).manual_seed(samples.seed)
        images = pipe(
            batch_size=samples.num_images, num_inference_steps=samples.num_inference_steps, generator=gen
        ).images
        return square_grid(images)

    def save(unet, noise_scheduler, out_dir: str):
        # With its code beside model_index.json: the folder loads where diffusers is, project or not.
        save_portable(LatentDiffusionPipeline(unet=unet, vae=vae.to("cpu"), scheduler=noise_scheduler), out_dir)

    return DiffusionSpec(
        build_model=lambda: build_unet(model, shape),
        make_loader=make_loader,
        batches_per_epoch=batches,
        prepare_batch=prepare,
        predict=lambda m, x, t, c: m(x, t).sample,
        save=save,
        sample_grid=sample_grid if samples.num_images > 0 else None,
    )


def run_training(
    latent_dir: str,
    vae_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    config: TrainLdmConfig,
    step_callback=None,
    show_progress: bool = True,
) -> dict:
    """Train in this process (one of possibly several under `accelerate launch`)."""
    data, model, cfg = config.data, config.model, config.training
    spec = ldm_spec(latent_dir, vae_dir, config)
    run_id = identity(data.to_dict(), model.to_dict(), cfg.to_dict(), data_identity(latent_dir))
    summary = train(
        spec,
        cfg,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        run_id=run_id,
        step_callback=step_callback,
        show_progress=show_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        manifest = read_manifest(latent_dir)
        metrics = {
            "latent_shape": manifest["latent_shape"],
            "vae_identity": manifest["vae"]["identity"],
            "scaling_factor": manifest["vae"]["scaling_factor"],
            "batch_size": data.batch_size,
            **{k: v for k, v in summary.items() if k != "run"},
        }  # wall-clock etc. go to timings
        write_metrics(metrics_path, metrics, summary["run"])
        write_model_card(
            model_dir,
            stage="train_ldm",
            params=config.to_dict(),
            metrics_path=metrics_path,
            data_dirs=[latent_dir],
            sample_grid=last_grid(live_dir),
        )
    return summary


def train_ldm(
    latent_dir: str,
    vae_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    config: TrainLdmConfig,
) -> dict | None:
    """Train here, or in `num_processes` processes under `accelerate launch`; returns this process's
    summary (None when launched: the processes write the metrics)."""
    paths = dict(
        latent_dir=latent_dir,
        vae_dir=vae_dir,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        metrics_path=metrics_path,
    )
    return run_or_launch(
        "tasks.latent.train", run_training, paths, config, Path(checkpoint_dir).with_suffix(".job.json")
    )


if __name__ == "__main__":  # one process of `accelerate launch -m tasks.latent.train --job job.json`
    config_job_main(run_training, TrainLdmConfig, "train_ldm")
