"""Stage train_cartoon: the attribute-conditional cartoon DDPM, trained by the shared engine.

The params section has four parts: `data` (resolution, batch), `model` (conditioning mode and UNet
shape), `training` (the engine: tasks/training/config.py) and `samples` (the per-epoch grid).
Several processes: set `num_processes` > 1 and the task re-launches itself under
`accelerate launch`; each process reads its own shards (the loader's rank::world_size split).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines import AttributeProjection, AttributeTau, CartoonDenoiser, CartoonDiffusionPipeline, make_scheduler
from tasks.cartoon.config import CartoonModelConfig, TrainCartoonConfig
from tasks.cartoon.loader import cartoon_loader, load_schema
from tasks.cartoon.schema import AttributeSchema
from tasks.processes.launch import config_job_main, run_or_launch
from tasks.reporting.grid import square_grid
from tasks.reporting.model_card import last_grid, write_model_card
from tasks.reporting.timings import write_metrics
from tasks.tracking.identity import data_identity, identity
from tasks.training.diffusion import DiffusionSpec
from tasks.training.engine import train


def build_unet_and_tau(
    model: CartoonModelConfig, schema: AttributeSchema, resolution: int
) -> tuple[nn.Module, nn.Module]:
    """The denoising UNet and its conditioning module for the chosen mode."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    levels = len(model.block_out_channels)
    layout = {"attribute_names": list(schema.names), "attribute_counts": list(schema.counts)}
    common = dict(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(model.block_out_channels),
        layers_per_block=model.layers_per_block,
        norm_num_groups=model.norm_num_groups,
    )
    if model.conditioning == "class_embedding":
        unet = UNet2DModel(
            down_block_types=tuple(model.down_block_types or ["DownBlock2D"] * levels),
            up_block_types=tuple(model.up_block_types or ["UpBlock2D"] * levels),
            class_embed_type="identity",
            **common,
        )
        tau = AttributeProjection(**layout, embedding_dim=unet.time_embedding.linear_2.out_features)
    else:  # cross_attention (CartoonModelConfig admits no other)
        unet = UNet2DConditionModel(
            down_block_types=tuple(model.down_block_types or ["CrossAttnDownBlock2D"] * levels),
            up_block_types=tuple(model.up_block_types or ["CrossAttnUpBlock2D"] * levels),
            cross_attention_dim=model.cross_attention_dim,
            attention_head_dim=model.attention_head_dim,
            only_cross_attention=model.only_cross_attention,
            **common,
        )
        tau = AttributeTau(
            **layout,
            num_tokens=model.tau_tokens,
            cross_attention_dim=model.cross_attention_dim,
            depth=model.tau_depth,
            hidden_dim=model.tau_hidden_dim,
        )
    return unet, tau


def resize_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, r, r), antialiased (the shards hold one resolution)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


def fixed_attributes(shard_dir: str, n: int) -> np.ndarray:
    """The first `n` validation attribute sets in shard order: the same every epoch and every run."""
    out = []
    for batch in cartoon_loader(shard_dir, "val", batch_size=1, shuffle=False, drop_last=False):
        out.append(batch["attrs"][0].numpy())
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"{shard_dir} has no validation samples to draw sample attributes from")
    return np.stack(out)


def make_pipeline(net: CartoonDenoiser, noise_scheduler) -> CartoonDiffusionPipeline:
    return CartoonDiffusionPipeline(unet=net.unet, tau=net.tau, scheduler=noise_scheduler)


def cartoon_spec(shard_dir: str, config: TrainCartoonConfig) -> DiffusionSpec:
    data, model, samples, cfg = config.data, config.model, config.samples, config.training
    schema = load_schema(shard_dir)
    res = data.resolution
    loader_kw = dict(
        batch_size=data.batch_size, shuffle_buffer=data.shuffle_buffer, workers=data.workers, seed=cfg.seed
    )
    # Batches per epoch for this run's world size (every rank gets the same number).
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batches = len(cartoon_loader(shard_dir, "train", epoch=0, rank=0, world_size=world, **loader_kw))
    sample_attrs = fixed_attributes(shard_dir, samples.num_images) if samples.num_images > 0 else None

    def build() -> nn.Module:
        return CartoonDenoiser(*build_unet_and_tau(model, schema, res))

    def make_loader(epoch: int, rank: int, world_size: int):
        return cartoon_loader(shard_dir, "train", epoch=epoch, rank=rank, world_size=world_size, **loader_kw)

    def prepare(batch, device):
        return resize_batch(batch["image"].to(device), res), batch["onehot"].to(device)

    def null_condition(cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        return cond * (~drop).to(cond.dtype)[:, None]  # the all-zero vector is the null condition

    def sample_grid(net, noise_scheduler, epoch: int):
        pipe = make_pipeline(net, make_scheduler(samples.scheduler, noise_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        gen = torch.Generator(device=pipe.device).manual_seed(samples.seed)
        images = pipe(
            sample_attrs,
            guidance_scale=samples.guidance_scale,
            generator=gen,
            num_inference_steps=samples.num_inference_steps,
        ).images
        return square_grid(images, scale=2)

    def save(net, noise_scheduler, out_dir: str):
        make_pipeline(net, noise_scheduler).save_pretrained(out_dir)

    return DiffusionSpec(
        build_model=build,
        make_loader=make_loader,
        batches_per_epoch=batches,
        prepare_batch=prepare,
        predict=lambda m, x, t, c: m(x, t, c),
        save=save,
        null_condition=null_condition,
        sample_grid=sample_grid if sample_attrs is not None else None,
    )


def run_training(
    shard_dir: str,
    model_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    metrics_path: str,
    config: TrainCartoonConfig,
    step_callback=None,
    show_progress: bool = True,
) -> dict:
    """Train in this process (one of possibly several under `accelerate launch`)."""
    data, model, cfg = config.data, config.model, config.training
    spec = cartoon_spec(shard_dir, config)
    run_id = identity(data.to_dict(), model.to_dict(), cfg.to_dict(), data_identity(shard_dir))
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
        quality = {k: v for k, v in summary.items() if k != "run"}  # wall-clock etc. go to timings
        write_metrics(
            metrics_path, {"conditioning": model.conditioning, "resolution": data.resolution, **quality}, summary["run"]
        )
        write_model_card(
            model_dir,
            stage="train_cartoon",
            params=config.to_dict(),
            metrics_path=metrics_path,
            data_dirs=[shard_dir],
            sample_grid=last_grid(live_dir),
        )
    return summary


def train_cartoon(
    shard_dir: str, model_dir: str, checkpoint_dir: str, live_dir: str, metrics_path: str, config: TrainCartoonConfig
) -> dict | None:
    """Train here, or in `num_processes` processes under `accelerate launch`; returns this process's
    summary (None when launched: the processes write the metrics)."""
    paths = dict(
        shard_dir=shard_dir,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        metrics_path=metrics_path,
    )
    return run_or_launch(
        "tasks.cartoon.train", run_training, paths, config, Path(checkpoint_dir).with_suffix(".job.json")
    )


if __name__ == "__main__":  # one process of `accelerate launch -m tasks.cartoon.train --job job.json`
    config_job_main(run_training, TrainCartoonConfig, "train_cartoon")
