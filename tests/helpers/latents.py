"""Fixtures shared by the latent-track tests: tiny aligned-face-like shards and a tiny VAE.

No tests here; the module is named so that it belongs to the latent tests' files.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tasks.shards.dataset import AtomicShardWriter, split_of, write_manifest

TINY_VAE = {"patch_size": 2, "latent_channels": 4, "hidden_channels": 16, "encoder_blocks": 1, "decoder_blocks": 1}


def draw_face(rng: np.random.Generator, size: int) -> Image.Image:
    """A smooth face-like drawing: skin ellipse, eyes, mouth, on a flat background."""
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(60, 200, 3)))
    d = ImageDraw.Draw(im)
    s = size / 64
    skin = tuple(int(v) for v in rng.integers([150, 100, 80], [255, 200, 170]))
    cx, cy = size / 2 + rng.normal(0, 2 * s), size / 2 + rng.normal(0, 2 * s)
    d.ellipse([cx - 20 * s, cy - 26 * s, cx + 20 * s, cy + 26 * s], fill=skin)
    for ex in (-8, 8):
        d.ellipse([cx + (ex - 3) * s, cy - 8 * s, cx + (ex + 3) * s, cy - 4 * s], fill=(40, 30, 30))
    d.line([cx - 8 * s, cy + 12 * s, cx + 8 * s, cy + 12 * s], fill=(150, 40, 50), width=max(1, int(2 * s)))
    return im


def make_aligned(
    out_dir: Path, n: int = 24, size: int = 32, shard_size: int = 6, val_fraction: float = 0.25, seed: int = 0
) -> Path:
    """Aligned-face-like shards in align_faces' format: `png` (uint8) + `json`, manifest with splits."""
    rng = np.random.default_rng(seed)
    by_split: dict[str, list] = {"train": [], "val": []}
    for i in range(n):
        key = f"face{i:05d}"
        buf = io.BytesIO()
        draw_face(rng, size).save(buf, format="PNG")
        by_split[split_of(key, val_fraction)].append((key, buf.getvalue()))
    splits = {}
    for split, items in by_split.items():
        shards = []
        for idx, start in enumerate(range(0, len(items), shard_size)):
            with AtomicShardWriter(out_dir, split, max_count=shard_size, start_index=idx) as w:
                for key, png in items[start : start + shard_size]:
                    w.write({"__key__": key, "png": png, "json": {"key": key}})
            shards.extend(w.shards)
        splits[split] = {"count": len(items), "shards": shards}
    write_manifest(
        out_dir,
        {
            "kind": "faces_aligned",
            "counts": {s: v["count"] for s, v in splits.items()},
            "splits": splits,
            "fingerprint": f"test-{seed}-{n}-{size}",
        },
    )
    return out_dir


def save_tiny_vae(out_dir: Path, seed: int = 0, resolution: int = 32, scaling_factor: float = 0.5) -> Path:
    from tasks.latent.train_vae import build_vae

    torch.manual_seed(seed)
    vae = build_vae(TINY_VAE, resolution)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.save_pretrained(out_dir)
    return out_dir


# The encoding settings the latent tests use unless they say otherwise (params.yaml's are the stage's).
ENCODE = dict(resolution=None, flip=False, batch_size=32, device="cpu", precision="bf16", num_processes=1)


def encode_latents(aligned_dir, vae_dir, out_dir, **kw):
    """tasks.latent.encode.encode_latents with ENCODE filled in."""
    from tasks.latent.encode import encode_latents as encode

    return encode(aligned_dir, vae_dir, out_dir, **{**ENCODE, **kw})
