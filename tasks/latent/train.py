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

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from pipelines import LatentDiffusionPipeline, make_scheduler
from tasks.latent.loader import latent_loader
from tasks.latent.vae import load_vae, merged
from tasks.common.launch import job_main, launch
from tasks.common.log import get_logger
from tasks.common.shards import MANIFEST, read_manifest, write_json_atomic
from tasks.training import TrainConfig, TrainSpec, fingerprint, train

DATA_DEFAULTS = {"batch_size": 32, "shuffle_buffer": 1000, "workers": 0,
                 "flip_prob": 0.5}  # chance of the flipped face's latents, when the shards hold them
MODEL_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [64, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
SAMPLE_DEFAULTS = {"num_images": 16, "scheduler": "ddim", "num_inference_steps": 25, "seed": 0}


def build_unet(model: dict, latent_shape: list[int]):
    from diffusers import UNet2DModel

    c, h, w = latent_shape
    if h != w:
        raise ValueError(f"square latents expected, got {latent_shape}")
    return UNet2DModel(sample_size=h, in_channels=c, out_channels=c,
                       block_out_channels=tuple(model["block_out_channels"]),
                       layers_per_block=model["layers_per_block"],
                       down_block_types=tuple(model["down_block_types"]), up_block_types=tuple(model["up_block_types"]),
                       attention_head_dim=model["attention_head_dim"], norm_num_groups=model["norm_num_groups"])


def image_grid(images: list[Image.Image], cols: int) -> Image.Image:
    w, h = images[0].size
    rows = -(-len(images) // cols)
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def ldm_spec(latent_dir: str, vae_dir: str, data: dict, model: dict, samples: dict, cfg: TrainConfig) -> TrainSpec:
    manifest = read_manifest(latent_dir)
    vae = load_vae(vae_dir)
    scale = float(vae.config.scaling_factor)
    if abs(scale - float(manifest["vae"]["scaling_factor"])) > 1e-6 * max(1.0, abs(scale)):
        raise ValueError(f"{vae_dir}'s scaling factor {scale} differs from the one {latent_dir} was encoded with "
                         f"({manifest['vae']['scaling_factor']}): re-run encode_latents")
    shape = manifest["latent_shape"]
    loader_kw = dict(batch_size=data["batch_size"], shuffle_buffer=data["shuffle_buffer"], workers=data["workers"],
                     seed=cfg.seed, flip_prob=data["flip_prob"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = len(latent_loader(latent_dir, "train", epoch=0, rank=0, world_size=world, **loader_kw))

    def make_loader(epoch: int, rank: int, world_size: int):
        return latent_loader(latent_dir, "train", epoch=epoch, rank=rank, world_size=world_size, **loader_kw)

    def prepare(batch, device):
        return batch["latent"].to(device) * scale, None

    def sample_grid(unet, noise_scheduler, epoch: int):
        pipe = LatentDiffusionPipeline(unet=unet, vae=vae.to(unet.device),
                                       scheduler=make_scheduler(samples["scheduler"], noise_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator(device=unet.device).manual_seed(samples["seed"])
        images = pipe(batch_size=samples["num_images"], num_inference_steps=samples["num_inference_steps"],
                      generator=gen).images
        return image_grid(images, cols=int(np.ceil(np.sqrt(len(images)))))

    def save(unet, noise_scheduler, out_dir: str):
        LatentDiffusionPipeline(unet=unet, vae=vae.to("cpu"), scheduler=noise_scheduler).save_pretrained(out_dir)

    return TrainSpec(build_model=lambda: build_unet(model, shape), make_loader=make_loader, batches_per_epoch=batches,
                     prepare_batch=prepare, predict=lambda m, x, t, c: m(x, t).sample, save=save,
                     sample_grid=sample_grid if samples["num_images"] > 0 else None)


def _data_identity(latent_dir: str) -> str:
    return hashlib.sha256((Path(latent_dir) / MANIFEST).read_bytes()).hexdigest()


def run_training(latent_dir: str, vae_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str,
                 data: dict | None = None, model: dict | None = None, training: dict | None = None,
                 samples: dict | None = None, step_callback=None, show_progress: bool = True) -> dict:
    """Train in this process (one of possibly several under `accelerate launch`)."""
    data = merged(DATA_DEFAULTS, data, "train_ldm.data")
    model = merged(MODEL_DEFAULTS, model, "train_ldm.model")
    samples = merged(SAMPLE_DEFAULTS, samples, "train_ldm.samples")
    cfg = TrainConfig.from_params(training or {})
    spec = ldm_spec(latent_dir, vae_dir, data, model, samples, cfg)
    run_id = fingerprint(data, model, cfg.to_dict(), _data_identity(latent_dir))
    summary = train(spec, cfg, model_dir=model_dir, checkpoint_dir=checkpoint_dir, live_dir=live_dir,
                    run_id=run_id, step_callback=step_callback, show_progress=show_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        manifest = read_manifest(latent_dir)
        metrics = {"latent_shape": manifest["latent_shape"], "vae_identity": manifest["vae"]["identity"],
                   "scaling_factor": manifest["vae"]["scaling_factor"], "batch_size": data["batch_size"], **summary}
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(metrics_path, metrics)
    return summary


@task(cache_policy=NO_CACHE)
def train_ldm_task(latent_dir: str, vae_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str,
                   metrics_path: str, data: dict | None = None, model: dict | None = None,
                   training: dict | None = None, samples: dict | None = None, num_processes: int = 1) -> str:
    """Train the latent diffusion model; returns the model folder (diffusers format)."""
    log = get_logger()
    kwargs = dict(latent_dir=latent_dir, vae_dir=vae_dir, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                  live_dir=live_dir, metrics_path=metrics_path, data=data, model=model, training=training,
                  samples=samples)
    if num_processes > 1:
        launch("tasks.latent.train", Path(checkpoint_dir).with_suffix(".job.json"), kwargs, num_processes,
               (training or {}).get("mixed_precision", "no"))
    else:
        summary = run_training(**kwargs)
        sps = summary["samples_per_second"]
        log.info(f"train_ldm: {summary['steps']} steps; final loss {summary['final_loss']}; "
                 f"{sps or 0:.1f} samples/s; memory {summary['memory_anatomy']['total_mb']:.1f} MB predicted")
    return model_dir


if __name__ == "__main__":  # one process of `accelerate launch -m tasks.latent.train --job job.json`
    job_main(run_training, "one training process (see train_ldm)")
