"""Stage train_vae: the face track's VAE, trained here on the shared engine or loaded pretrained.

`source` (params: `train_vae.source`):
  - `train`: fit a small autoencoder (pipelines/autoencoder.py) on the aligned training faces
    (L1 + MSE reconstruction + KL), the embedded default, since no pretrained weights can be had
    offline; the engine (tasks/training) gives it exact resume, the divergence guard and dvclive
    curves, plus a grid of validation faces over their reconstructions;
  - a local folder in diffusers format, or a Hugging Face hub id (tasks/latent/vae.py `load_pretrained`).

Whatever the source, the stage writes the VAE in diffusers format to one folder (models/vae), with
its latent scaling factor: a pretrained config's `scaling_factor`, or 1 / std of the training
latents z = mean + std * eps (the LDM paper's rule), written into the saved config.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipelines.autoencoder import PatchAutoencoderKL, vae_scale_factor
from tasks.latent.config import TrainVaeConfig
from tasks.latent.images import load_split, to_model_input
from tasks.latent.vae import (
    decode,
    latent_variance,
    load_pretrained,
    measure_latent_sums,
    posterior_moments,
    reconstruction_psnr,
    vae_identity,
)
from tasks.reporting.log import get_logger
from tasks.reporting.timings import write_metrics
from tasks.tracking.identity import data_identity, identity
from tasks.training.engine import TrainSpec, train


def build_vae(model: dict[str, Any], resolution: int) -> torch.nn.Module:
    """The autoencoder trained here (why not diffusers' AutoencoderKL: pipelines/autoencoder.py)."""
    if resolution % model["patch_size"]:
        raise ValueError(
            f"train_vae.resolution {resolution} is not a multiple of model.patch_size {model['patch_size']}"
        )
    return PatchAutoencoderKL(in_channels=3, out_channels=3, sample_size=resolution, **model)


def vae_spec(train_images: np.ndarray, val_images: np.ndarray, config: TrainVaeConfig, trained: dict) -> TrainSpec:
    """The small autoencoder of `build_vae` as the engine trains it: L1 + MSE reconstruction of a
    posterior sample plus a KL term, on uint8 (N, H, W, 3) faces. `save` puts the trained VAE (EMA
    weights if any) in `trained["vae"]`; the stage then measures and saves it."""
    from diffusers.utils import make_image_grid

    model, loss_cfg, seed = config.model.to_dict(), config.loss, config.training.seed
    bs = min(loss_cfg.batch_size, len(train_images))

    def build():
        vae = build_vae(model, config.resolution)
        if loss_cfg.logvar_init is not None:  # nearly deterministic at first: hundreds of steps faster
            with torch.no_grad():
                vae.logvar_bias.fill_(float(loss_cfg.logvar_init))
        return vae

    def make_loader(epoch: int, rank: int, world: int):
        mine = train_images[rank::world]
        order = torch.randperm(len(mine), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).numpy()
        return (to_model_input(mine[order[i : i + bs]]) for i in range(0, len(order) - bs + 1, bs))

    def objective(vae, x: torch.Tensor, generator: torch.Generator):
        x = x.to(generator.device)
        if loss_cfg.hflip:
            flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=x.device)
        rec = vae.decode(z).sample.float()
        l1, mse = (rec - x).abs().mean(), (rec - x).square().mean()
        kl = posterior.kl().mean() / z[0].numel()  # per latent element, so kl_weight is size-free
        loss = loss_cfg.l1_weight * l1 + loss_cfg.mse_weight * mse + loss_cfg.kl_weight * kl
        return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def reconstructions(vae, epoch: int):
        """Validation faces (top) and their round trips through the posterior mean (bottom)."""
        x = to_model_input(val_images[:8]).to(vae.device)
        rec = decode(vae, posterior_moments(vae, x)[0]).clamp(-1, 1)
        as_pil = lambda t: [  # noqa: E731
            Image.fromarray(a) for a in ((t + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        ]
        return make_image_grid(as_pil(x) + as_pil(rec), rows=2, cols=len(x))

    def save(vae, out_dir: str):
        trained["vae"] = copy.deepcopy(vae).to("cpu")

    return TrainSpec(
        build_model=build,
        make_loader=make_loader,
        batches_per_epoch=len(train_images) // bs,
        objective=objective,
        save=save,
        sample_grid=reconstructions if len(val_images) else None,
    )


def fit_vae(
    train_images: np.ndarray,
    val_images: np.ndarray,
    config: TrainVaeConfig,
    *,
    out_dir: str,
    checkpoint_dir: str,
    live_dir: str,
    run_id: str,
    progress: bool = True,
    step_callback=None,
) -> tuple[torch.nn.Module, dict]:
    """Train the small autoencoder on the shared engine; returns (vae in eval mode, engine summary)."""
    trained: dict = {}
    spec = vae_spec(train_images, val_images, config, trained)
    summary = train(
        spec,
        config.training,
        model_dir=out_dir,
        checkpoint_dir=checkpoint_dir,
        live_dir=live_dir,
        run_id=run_id,
        step_callback=step_callback,
        show_progress=progress,
    )
    return trained["vae"].eval().requires_grad_(False), summary


def _fresh_live(live_dir: str):
    """A dvclive folder started afresh (dvc.yaml declares its plots for every source)."""
    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    return Live(dir=live_dir, save_dvc_exp=False, dvcyaml=None)


def prepare_vae(
    shard_dir: str,
    out_dir: str,
    metrics_path: str,
    live_dir: str | None,
    config: TrainVaeConfig,
    *,
    checkpoint_dir: str | None = None,
    progress: bool = True,
    log=print,
    step_callback=None,
) -> dict:
    """The train_vae stage's work: obtain the VAE, fix its scaling factor, save it, report PSNR.

    `eval_images` caps the faces used for the validation PSNR and, with a pretrained VAE, for measuring
    the scaling factor (the first N in shard order; FFHQ's 70000 would not fit in memory). Training
    runs on the shared engine (accelerate picks the device; `checkpoint_dir` and `live_dir` are
    required); `device` places the measurements."""
    source, subfolder, resolution = config.source, config.subfolder, config.resolution
    eval_images, eval_batch_size, device = config.eval_images, config.eval_batch_size, config.device
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    _, train_images = load_split(shard_dir, "train", resolution, limit=None if source == "train" else eval_images)
    _, val_images = load_split(shard_dir, "val", resolution, limit=eval_images)
    summary: dict[str, Any] = {"source": source}
    timings: dict[str, Any] = {}
    live = None
    if source == "train":
        if checkpoint_dir is None or live_dir is None:
            raise ValueError("train_vae.source train needs a checkpoint_dir and a live_dir (the engine's)")
        run_id = identity(
            resolution,
            config.model.to_dict(),
            config.loss.to_dict(),
            config.training.to_dict(),
            data_identity(shard_dir),
        )
        vae, fit = fit_vae(
            train_images,
            val_images,
            config,
            out_dir=out_dir,
            checkpoint_dir=checkpoint_dir,
            live_dir=live_dir,
            run_id=run_id,
            progress=progress,
            step_callback=step_callback,
        )
        vae = vae.to(dev)
        timings = fit.pop("run")  # wall-clock, throughput, memory: not quality metrics
        summary["training"] = {**fit, "parameters": sum(p.numel() for p in vae.parameters())}
        config_scale = None
    else:
        vae, raw, resolved = load_pretrained(source, subfolder)
        vae = vae.to(dev).eval().requires_grad_(False)
        summary["resolved"] = resolved
        config_scale = raw.get("scaling_factor")
    # The scaling factor: the pretrained config's, else 1 / std of the training latents.
    sums = measure_latent_sums(vae, train_images[:eval_images], eval_batch_size, dev)
    measured = 1.0 / math.sqrt(latent_variance(sums))
    scale = float(config_scale) if config_scale is not None else measured
    vae.register_to_config(scaling_factor=scale)
    summary.update(
        scaling_factor=scale,
        scaling_factor_source="config" if config_scale is not None else "measured",
        scaling_factor_measured=measured,
    )
    psnr = reconstruction_psnr(vae, val_images, eval_batch_size, dev)
    if source != "train" and live_dir:  # a pretrained VAE has no curves: its evaluation is the folder's one row
        live = _fresh_live(live_dir)
        for name in ("vae", "bilinear", "flat"):
            live.log_metric(f"train_vae/psnr_val_{name}_db", psnr[name])
    reliable = len(val_images) >= config.min_val_images
    vae = vae.to("cpu")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir)
    metrics = {
        "psnr_val_db": psnr["vae"],  # decode(posterior mean) vs the validation face
        "psnr_val_flat_db": psnr["flat"],  # reference: each face's mean colour
        "psnr_val_bilinear_db": psnr["bilinear"],  # reference: bilinear down-up by the VAE's factor
        "psnr_gain_over_bilinear_db": psnr["vae"] - psnr["bilinear"],
        "target_met": reliable and psnr["vae"] - psnr["bilinear"] >= config.min_gain_over_bilinear_db,
        "reliable": reliable,  # measured on at least min_val_images faces
        "val_images": int(len(val_images)),
        "resolution": resolution,
        "downsample_factor": vae_scale_factor(vae),
        "latent_channels": int(vae.config.latent_channels),
        "vae_identity": vae_identity(vae),
        **summary,
    }
    if live is not None:
        live.summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        live.end()
    write_metrics(metrics_path, metrics, timings)
    log(
        f"train_vae: PSNR on {len(val_images)} validation faces {psnr['vae']:.2f} dB (flat {psnr['flat']:.2f}, "
        f"bilinear f={vae_scale_factor(vae)} {psnr['bilinear']:.2f}); scaling factor {scale:.4f} "
        f"({summary['scaling_factor_source']}) -> {out_dir}"
    )
    if not reliable:
        get_logger().warning(
            f"train_vae: the PSNR ({psnr['vae']:.2f} dB) is measured on only {len(val_images)} validation faces, fewer "
            f"than min_val_images {config.min_val_images}: not a reliable figure (metrics: reliable false). Add "
            "photos (duplicates are dropped by fetch_faces) or raise fetch_faces.val_fraction"
        )
    elif not metrics["target_met"]:
        get_logger().warning(
            f"train_vae: target missed: PSNR {psnr['vae']:.2f} dB is {metrics['psnr_gain_over_bilinear_db']:+.2f} dB "
            f"against the bilinear reference; the target is {config.min_gain_over_bilinear_db:+.1f} dB "
            "(metrics: target_met false)"
        )
    return metrics
