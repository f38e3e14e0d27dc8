"""The VAE of the latent track: a pretrained diffusers autoencoder, or a small one trained here.

`source` (params: `train_vae.source`):
  - `train`: fit a small `AutoencoderKL` on the aligned training faces (reconstruction + KL), the
    embedded default, since no pretrained weights can be had offline;
  - a local folder in diffusers format (an autoencoder's folder, or a pipeline folder with `vae/`
    or `vqvae/` inside);
  - a Hugging Face hub id (`stabilityai/sd-vae-ft-mse`, or `CompVis/ldm-celebahq-256` with
    `subfolder: vqvae` for the LDM paper's VQ f=4 model). Offline with no local copy the load
    fails at once with a message that says how to provide one.

Whatever the source, the stage writes the VAE in diffusers format to one folder (models/vae) that
the later stages depend on, so "the VAE" is always a folder whose content DVC hashes.

The latent scaling factor: a pretrained config that names `scaling_factor` keeps it; otherwise it
is measured on the training latents as 1 / std of z = mean + std * eps (the LDM paper's rule), and
written into the saved config (so every reader, the pipeline included, gets the same number).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import pipelines
from pipelines.autoencoder import PatchAutoencoderKL, vae_scale_factor
from pipelines.identity import module_identity
from tasks.common.log import get_logger
from tasks.common.timings import write_metrics
from tasks.latent.config import TrainVaeConfig
from tasks.latent.images import load_split, to_model_input

VAE_CLASSES = ("AutoencoderKL", "VQModel", "PatchAutoencoderKL")  # the last is this project's (pipelines/)

# --------------------------------------------------------------------------- loading

class VAESourceError(RuntimeError):
    """The VAE cannot be loaded from the given source (offline with no copy, wrong folder, ...)."""


def _vae_class(name: str):
    import diffusers

    if name not in VAE_CLASSES:
        raise VAESourceError(f"unsupported autoencoder class {name!r}; supported: {', '.join(VAE_CLASSES)}")
    return getattr(diffusers, name, None) or getattr(pipelines, name)


def _local_vae_dir(path: Path, subfolder: str | None) -> Path:
    if subfolder:
        path = path / subfolder
    if (path / "config.json").is_file():
        return path
    for sub in ("vae", "vqvae"):  # a whole pipeline folder
        if (path / sub / "config.json").is_file():
            return path / sub
    raise VAESourceError(f"{path} holds no diffusers autoencoder (no config.json, vae/ or vqvae/ inside)")


def offline_help(source: str, subfolder: str | None) -> str:
    sub = f" --include '{subfolder}/*'" if subfolder else ""
    target = f"models/{source.split('/')[-1]}"
    return (f"cannot load the VAE '{source}'{f' (subfolder {subfolder})' if subfolder else ''}: it is not in the "
            f"local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
            f"Provide a local copy: on a machine with internet run `huggingface-cli download {source}{sub} "
            f"--local-dir {target}`, copy that folder here and set `train_vae.source: {target}` in params.yaml "
            f"(or fill the HF cache and set HF_HUB_OFFLINE=0); or use `train_vae.source: train` to train a small "
            f"VAE on the aligned faces.")


def load_pretrained(source: str, subfolder: str | None = None) -> tuple[torch.nn.Module, dict, str]:
    """(vae, raw config.json dict, resolved description) from a local folder or a hub id."""
    path = Path(source)
    if path.exists():
        folder = _local_vae_dir(path, subfolder)
        raw = json.loads((folder / "config.json").read_text())
        cls = _vae_class(raw.get("_class_name", "AutoencoderKL"))
        return cls.from_pretrained(str(folder)), raw, str(folder)
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise VAESourceError(f"train_vae.source {source!r} is neither 'train', an existing folder, nor a hub id "
                             "(owner/name)")
    # A hub id: fetch the config first (small), so offline fails in a second with a clear message.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        config_path = hf_hub_download(source, "config.json", subfolder=subfolder)
    except (LocalEntryNotFoundError, OSError) as exc:  # offline, no cache, no network, unknown repo
        raise VAESourceError(offline_help(source, subfolder) + f" [{type(exc).__name__}]") from None
    except Exception as exc:  # requests/httpx connection errors differ across versions
        raise VAESourceError(offline_help(source, subfolder) + f" [{type(exc).__name__}: {exc}]") from None
    raw = json.loads(Path(config_path).read_text())
    cls = _vae_class(raw.get("_class_name", "AutoencoderKL"))
    try:
        vae = cls.from_pretrained(source, subfolder=subfolder)
    except OSError as exc:
        raise VAESourceError(offline_help(source, subfolder) + f" [{exc}]") from None
    return vae, raw, f"{source}{'/' + subfolder if subfolder else ''}"


def load_vae(vae_dir: str | Path) -> torch.nn.Module:
    """The VAE a stage wrote (models/vae), in eval mode with gradients off."""
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"{vae_dir} holds no VAE (config.json missing): run the train_vae stage first")
    raw = json.loads((vae_dir / "config.json").read_text())
    vae = _vae_class(raw.get("_class_name", "AutoencoderKL")).from_pretrained(str(vae_dir))
    vae.eval().requires_grad_(False)
    return vae


def vae_identity(vae: torch.nn.Module) -> str:
    """A hash of the VAE's class, config and weights: equal for the same VAE saved and loaded any
    number of times, different as soon as one weight or config value differs."""
    return module_identity(vae)


# --------------------------------------------------------------------------- encode / decode

def posterior_moments(vae: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] -> the posterior's (mean, std), unscaled. A VQ model is deterministic
    (std = 0; its latents are the encoder output before quantisation, as the LDM paper trains on)."""
    if type(vae).__name__ == "VQModel":
        z = vae.encode(x).latents
        return z, torch.zeros_like(z)
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std


def decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images in [-1, 1] (unclamped)."""
    return vae.decode(z).sample


def latent_variance(stats: dict[str, float]) -> float:
    """Var of z = mean + std * eps over every latent element, from running sums:
    E[z^2] - E[z]^2 = E[mean^2] + E[std^2] - E[mean]^2 (eps independent, zero-mean, unit-variance)."""
    n = stats["n"]
    m1, m2, s2 = stats["sum_mean"] / n, stats["sum_mean_sq"] / n, stats["sum_std_sq"] / n
    return max(m2 + s2 - m1 * m1, 1e-12)


def moment_sums(mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
    mean, std = mean.double(), std.double()
    return {"n": float(mean.numel()), "sum_mean": mean.sum().item(), "sum_mean_sq": mean.square().sum().item(),
            "sum_std_sq": std.square().sum().item()}


def add_sums(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


@torch.no_grad()
def measure_latent_sums(vae: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> dict:
    sums = None
    for i in range(0, len(images), batch_size):
        mean, std = posterior_moments(vae, to_model_input(images[i:i + batch_size]).to(device))
        sums = add_sums(sums, moment_sums(mean, std))
    return sums


@torch.no_grad()
def reconstruction_psnr(vae: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> dict:
    """Mean per-image PSNR (dB, pixels in [0, 1]) of decode(posterior mean) against the input, and of
    two reference reconstructions: the image's mean colour (flat) and a bilinear down-up at the VAE's
    factor (what f x f pixels average into, with no learned detail)."""
    f = vae_scale_factor(vae)
    out: dict[str, list[float]] = {"vae": [], "flat": [], "bilinear": []}

    def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
        mse = ((a.clamp(-1, 1) - b) / 2).square().flatten(1).mean(1).clamp_min(1e-10)
        return (10 * torch.log10(1.0 / mse)).tolist()

    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i:i + batch_size]).to(device)
        mean, _ = posterior_moments(vae, x)
        out["vae"] += psnr(decode(vae, mean).float(), x)
        out["flat"] += psnr(x.mean(dim=(2, 3), keepdim=True).expand_as(x), x)
        small = F.interpolate(x, scale_factor=1 / f, mode="bilinear", antialias=True, align_corners=False)
        out["bilinear"] += psnr(F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False), x)
    return {k: float(np.mean(v)) for k, v in out.items()}


# --------------------------------------------------------------------------- training

def build_vae(model: dict[str, Any], resolution: int) -> torch.nn.Module:
    """The autoencoder trained here (why not diffusers' AutoencoderKL: pipelines/autoencoder.py)."""
    if resolution % model["patch_size"]:
        raise ValueError(f"train_vae.resolution {resolution} is not a multiple of model.patch_size "
                         f"{model['patch_size']}")
    return PatchAutoencoderKL(in_channels=3, out_channels=3, sample_size=resolution, **model)


def fit_vae(train_images: np.ndarray, model: dict, training: dict, resolution: int, device: torch.device,
            live=None, progress: bool = True, log=print) -> tuple[torch.nn.Module, dict]:
    """Train the small autoencoder of `build_vae` on uint8 (N, H, W, 3) faces; returns (vae in eval
    mode, summary)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    torch.manual_seed(training["seed"])
    vae = build_vae(model, resolution)
    if training["logvar_init"] is not None:
        with torch.no_grad():
            vae.logvar_bias.fill_(float(training["logvar_init"]))
    vae = vae.to(device).train()
    n_params = sum(p.numel() for p in vae.parameters())
    steps = int(training["max_steps"])
    opt = torch.optim.AdamW(vae.parameters(), lr=training["learning_rate"], weight_decay=0.0)
    # cosine decay to 0: +0.3-0.5 dB over a constant rate at the same step count (docs/faces_quality.md)
    sched = get_cosine_schedule_with_warmup(opt, training["lr_warmup_steps"], steps)
    g = torch.Generator().manual_seed(training["seed"])
    bs = min(int(training["batch_size"]), len(train_images))
    log(f"train_vae: {n_params:,} parameters, f={vae_scale_factor(vae)}, {len(train_images)} faces at "
        f"{resolution}px, {steps} steps of {bs}")
    order, pos = torch.randperm(len(train_images), generator=g), 0
    t0, step, loss_sum, stopped_early = time.perf_counter(), 0, 0.0, False
    bar = tqdm(total=steps, desc="train_vae", unit="step", disable=not progress, dynamic_ncols=True)
    while step < steps:
        if pos + bs > len(order):
            order, pos = torch.randperm(len(train_images), generator=g), 0
        idx = order[pos:pos + bs].numpy()
        pos += bs
        x = to_model_input(train_images[idx])
        if training["hflip"]:
            flip = torch.rand(len(x), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
        x = x.to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        rec = vae.decode(z).sample
        l1, mse = (rec - x).abs().mean(), (rec - x).square().mean()
        kl = posterior.kl().mean() / z[0].numel()  # per latent element, so kl_weight is size-free
        loss = training["l1_weight"] * l1 + training["mse_weight"] * mse + training["kl_weight"] * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if training["max_grad_norm"] is not None:
            torch.nn.utils.clip_grad_norm_(vae.parameters(), training["max_grad_norm"])
        opt.step()
        sched.step()
        step += 1
        loss_sum += loss.item()
        bar.update(1)
        if step % training["log_every"] == 0 or step == steps:
            bar.set_postfix(loss=f"{loss.item():.4f}", mse=f"{mse.item():.4f}")
            if live is not None:
                live.step = step
                live.log_metric("train_vae/loss", loss.item())
                live.log_metric("train_vae/mse", mse.item())
                live.log_metric("train_vae/kl", kl.item())
        if training["max_seconds"] is not None and time.perf_counter() - t0 > training["max_seconds"]:
            stopped_early = True
            log(f"train_vae: max_seconds={training['max_seconds']} reached after {step} steps")
            break
    bar.close()
    seconds = time.perf_counter() - t0
    vae.eval().requires_grad_(False)
    return vae, {"steps": step, "seconds": seconds, "stopped_by_time": stopped_early, "parameters": n_params,
                 "images_per_second": step * bs / seconds}


def _fresh_live(live_dir: str):
    """A dvclive folder started afresh (dvc.yaml declares its plots for every source)."""
    import shutil

    from dvclive import Live

    shutil.rmtree(live_dir, ignore_errors=True)
    return Live(dir=live_dir, save_dvc_exp=False, dvcyaml=None)


def prepare_vae(shard_dir: str, out_dir: str, metrics_path: str, live_dir: str | None, config: TrainVaeConfig, *,
                progress: bool = True, log=print) -> dict:
    """The train_vae stage's work: obtain the VAE, fix its scaling factor, save it, report PSNR.

    `eval_images` caps the faces used for the validation PSNR and, with a pretrained VAE, for measuring
    the scaling factor (the first N in shard order; FFHQ's 70000 would not fit in memory)."""
    source, subfolder, resolution = config.source, config.subfolder, config.resolution
    eval_images, eval_batch_size, device = config.eval_images, config.eval_batch_size, config.device
    model, training = config.model.to_dict(), config.training.to_dict()
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    _, train_images = load_split(shard_dir, "train", resolution, limit=None if source == "train" else eval_images)
    _, val_images = load_split(shard_dir, "val", resolution, limit=eval_images)
    summary: dict[str, Any] = {"source": source}
    timings: dict[str, Any] = {}
    live = None
    if source == "train":
        if live_dir:
            live = _fresh_live(live_dir)
        vae, fit = fit_vae(train_images, model, training, resolution, dev, live=live, progress=progress, log=log)
        timings = {k: fit.pop(k) for k in ("seconds", "images_per_second")}  # not quality metrics
        summary["training"] = fit
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
    summary.update(scaling_factor=scale, scaling_factor_source="config" if config_scale is not None else "measured",
                   scaling_factor_measured=measured)
    psnr = reconstruction_psnr(vae, val_images, eval_batch_size, dev)
    if live is None and live_dir:  # a pretrained VAE has no curves: its evaluation is the folder's one row
        live = _fresh_live(live_dir)
        for name in ("vae", "bilinear", "flat"):
            live.log_metric(f"train_vae/psnr_val_{name}_db", psnr[name])
    reliable = len(val_images) >= config.min_val_images
    vae = vae.to("cpu")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir)
    metrics = {
        "psnr_val_db": psnr["vae"],                # decode(posterior mean) vs the validation face
        "psnr_val_flat_db": psnr["flat"],          # reference: each face's mean colour
        "psnr_val_bilinear_db": psnr["bilinear"],  # reference: bilinear down-up by the VAE's factor
        "psnr_gain_over_bilinear_db": psnr["vae"] - psnr["bilinear"],
        "target_met": reliable and psnr["vae"] - psnr["bilinear"] >= config.min_gain_over_bilinear_db,
        "reliable": reliable,                      # measured on at least min_val_images faces
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
    log(f"train_vae: PSNR on {len(val_images)} validation faces {psnr['vae']:.2f} dB (flat {psnr['flat']:.2f}, "
        f"bilinear f={vae_scale_factor(vae)} {psnr['bilinear']:.2f}); scaling factor {scale:.4f} "
        f"({summary['scaling_factor_source']}) -> {out_dir}")
    if not reliable:
        get_logger().warning(
            f"train_vae: the PSNR ({psnr['vae']:.2f} dB) is measured on only {len(val_images)} validation faces, fewer "
            f"than min_val_images {config.min_val_images}: not a reliable figure (metrics: reliable false). Add "
            "photos (duplicates are dropped by fetch_faces) or raise fetch_faces.val_fraction")
    elif not metrics["target_met"]:
        get_logger().warning(
            f"train_vae: target missed: PSNR {psnr['vae']:.2f} dB is {metrics['psnr_gain_over_bilinear_db']:+.2f} dB "
            f"against the bilinear reference; the target is {config.min_gain_over_bilinear_db:+.1f} dB "
            "(metrics: target_met false)")
    return metrics
