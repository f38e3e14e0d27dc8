"""What a diffusion model brings to the engine (`DiffusionSpec`), and the denoising objective.

The cartoon model, the latent model and DreamBooth each say how to build their network, read a
batch and call the network; the objective here does the rest of a training step: noise and
timesteps drawn from the engine's per-micro-batch generator, condition dropout for classifier-free
guidance, the epsilon or v target, and the (Min-SNR weighted) MSE or the stage's own loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.training.config import TrainConfig
from tasks.training.engine import TrainSpec


@dataclass
class DiffusionSpec:
    build_model: Callable[[], nn.Module]
    """Returns the module to train, freshly initialised (the engine seeds torch first)."""
    make_loader: Callable[[int, int, int], Iterable]
    """(epoch, rank, world_size) -> this process's batches for the epoch; deterministic."""
    batches_per_epoch: int
    """Micro-batches each process gets per epoch (every rank the same)."""
    prepare_batch: Callable[[Any, torch.device], tuple[torch.Tensor, Any]]
    """(batch, device) -> (clean target x0 (B, C, H, W), condition or None)."""
    predict: Callable[[nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]
    """(model, noisy x_t, timesteps, condition) -> the model's prediction (noise or v)."""
    save: Callable[[nn.Module, Any, str], None]
    """(model with EMA weights, noise scheduler, out_dir) -> writes the final model."""
    null_condition: Callable[[Any, torch.Tensor], Any] | None = None
    """(condition, drop mask (B,) bool) -> condition with masked rows set to the null condition."""
    sample_grid: Callable[[nn.Module, Any, int], Any] | None = None
    """(model with EMA weights, noise scheduler, epoch) -> a PIL image logged per epoch."""
    loss: Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
    """(prediction, target, condition), both float32 -> (loss to minimise, {name: detached scalar} logged
    as `train/<name>` curves). None: plain MSE over the batch."""
    param_groups: Callable[[nn.Module, float], list[dict[str, Any]]] | None = None
    """(model, learning_rate) -> AdamW parameter groups (e.g. new embeddings at their own rate)."""

    def for_engine(self, cfg: TrainConfig) -> TrainSpec:
        if self.loss is not None and cfg.snr_gamma is not None:
            raise ValueError(
                "training.snr_gamma weights the engine's own MSE; this stage has a loss of its own "
                "(e.g. DreamBooth's prior-preservation loss): set snr_gamma: null"
            )
        scheduler = cfg.noise_scheduler()
        grid = self.sample_grid
        return TrainSpec(
            build_model=self.build_model,
            make_loader=self.make_loader,
            batches_per_epoch=self.batches_per_epoch,
            objective=lambda model, batch, generator: self._objective(model, batch, generator, scheduler, cfg),
            save=lambda net, out_dir: self.save(net, scheduler, out_dir),
            sample_grid=None if grid is None else (lambda net, epoch: grid(net, scheduler, epoch)),
            param_groups=self.param_groups,
        )

    def _objective(self, model, batch, generator: torch.Generator, scheduler, cfg: TrainConfig):
        x0, cond = self.prepare_batch(batch, generator.device)
        bsz = x0.shape[0]
        # The draw order (noise, timesteps, dropout) is part of what a seed means: keep it.
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=x0.device
        )
        if cfg.cond_drop_prob > 0 and self.null_condition is not None:
            drop = torch.rand(bsz, generator=generator, device=x0.device) < cfg.cond_drop_prob
            cond = self.null_condition(cond, drop)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        if cfg.prediction_type == "epsilon":
            target = noise
        else:  # v = sqrt(a) * eps - sqrt(1 - a) * x0
            target = scheduler.get_velocity(x0, noise, timesteps)
        pred = self.predict(model, noisy, timesteps, cond).float()
        if self.loss is None:
            return denoising_loss(pred, target.float(), timesteps, scheduler, cfg), {}
        return self.loss(pred, target.float(), cond)


def denoising_loss(
    pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler, cfg: TrainConfig
) -> torch.Tensor:
    """MSE, or with `snr_gamma` the Min-SNR weighted MSE: each sample's loss scaled by
    min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), so the nearly clean timesteps, easy and
    many, stop dominating the gradient."""
    if cfg.snr_gamma is None:
        return F.mse_loss(pred, target)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weight = snr.clamp(max=cfg.snr_gamma) / (snr if cfg.prediction_type == "epsilon" else snr + 1)
    per_sample = (pred - target).square().flatten(1).mean(1)
    return (per_sample * weight).mean()
