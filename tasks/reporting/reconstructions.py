"""A pretrained VAE's picture: validation faces over their round trips through it.

A VAE trained here gets this grid from the training engine (tasks/latent/train_vae.py, every
`samples_every_epochs`); a pretrained one is only loaded and measured, so flows/train_vae.py draws
it here, into the same dvclive images folder that dvc.yaml declares for every source.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image

from tasks.latent.images import load_split, to_model_input
from tasks.latent.vae import decode, load_vae, posterior_moments


@torch.no_grad()
def save_reconstructions(vae_dir: str, shard_dir: str, live_dir: str, resolution: int, count: int = 8) -> Path:
    """`count` validation faces (top) and decode(posterior mean) of each (bottom), as one PNG."""
    vae = load_vae(vae_dir)
    _, faces = load_split(shard_dir, "val", resolution, limit=count)
    x = to_model_input(faces)
    rec = decode(vae, posterior_moments(vae, x)[0]).clamp(-1, 1)

    def as_pil(t: torch.Tensor) -> list[Image.Image]:
        return [Image.fromarray(a) for a in ((t + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()]

    out = Path(live_dir) / "plots" / "images" / "samples" / "reconstructions.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(as_pil(x) + as_pil(rec), rows=2, cols=len(x)).save(out)
    return out
