"""The face track's VAE as the later stages use it: loading (a folder this project wrote, a local
diffusers folder or a Hugging Face hub id), its identity, encoding to posterior moments, decoding,
the latent statistics behind the scaling factor, and the reconstruction PSNR.

Training the small VAE of the embedded default is the train_vae stage's own work
(tasks/latent/train_vae.py); nothing here imports the training engine, so the stages that only
load a VAE do not depend on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import pipelines
from pipelines.autoencoder import vae_scale_factor
from pipelines.identity import module_identity
from tasks.latent.images import to_model_input

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
    return (
        f"cannot load the VAE '{source}'{f' (subfolder {subfolder})' if subfolder else ''}: it is not in the "
        f"local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). "
        f"Provide a local copy: on a machine with internet run `huggingface-cli download {source}{sub} "
        f"--local-dir {target}`, copy that folder here and set `train_vae.source: {target}` in params.yaml "
        f"(or fill the HF cache and set HF_HUB_OFFLINE=0); or use `train_vae.source: train` to train a small "
        f"VAE on the aligned faces."
    )


def load_pretrained(source: str, subfolder: str | None = None) -> tuple[torch.nn.Module, dict, str]:
    """(vae, raw config.json dict, resolved description) from a local folder or a hub id."""
    path = Path(source)
    if path.exists():
        folder = _local_vae_dir(path, subfolder)
        raw = json.loads((folder / "config.json").read_text())
        cls = _vae_class(raw.get("_class_name", "AutoencoderKL"))
        return cls.from_pretrained(str(folder)), raw, str(folder)
    if source.count("/") != 1 or source.startswith((".", "/")):
        raise VAESourceError(
            f"train_vae.source {source!r} is neither 'train', an existing folder, nor a hub id (owner/name)"
        )
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
    return {
        "n": float(mean.numel()),
        "sum_mean": mean.sum().item(),
        "sum_mean_sq": mean.square().sum().item(),
        "sum_std_sq": std.square().sum().item(),
    }


def add_sums(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    return dict(b) if a is None else {k: a[k] + b[k] for k in b}


@torch.no_grad()
def measure_latent_sums(vae: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> dict:
    sums = None
    for i in range(0, len(images), batch_size):
        mean, std = posterior_moments(vae, to_model_input(images[i : i + batch_size]).to(device))
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
        x = to_model_input(images[i : i + batch_size]).to(device)
        mean, _ = posterior_moments(vae, x)
        out["vae"] += psnr(decode(vae, mean).float(), x)
        out["flat"] += psnr(x.mean(dim=(2, 3), keepdim=True).expand_as(x), x)
        small = F.interpolate(x, scale_factor=1 / f, mode="bilinear", antialias=True, align_corners=False)
        out["bilinear"] += psnr(F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False), x)
    return {k: float(np.mean(v)) for k, v in out.items()}
