"""Aligned face shards -> image tensors for the VAE (no prefect here: cheap to import).

Aligned shards hold uint8 PNGs (256x256 for the embedded default); the VAE may work at a lower
`resolution` (64 in the embedded default), reached by an antialiased Lanczos resize in Pillow.
Normalisation to [-1, 1] happens here, in the loader, as the data contract says.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.shards.dataset import shard_paths


def decode_png(png: bytes, resolution: int | None) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3), resized to resolution x resolution when it differs."""
    im = Image.open(io.BytesIO(png)).convert("RGB")
    if resolution is not None and im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def to_model_input(batch_uint8: np.ndarray):
    """uint8 (B, H, W, 3) -> float32 torch (B, 3, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch_uint8)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


def iter_shard(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(key, png bytes) of every sample of one aligned shard, in stored order."""
    import webdataset as wds

    for sample in wds.WebDataset([str(path)], shardshuffle=False, empty_check=False):
        yield sample["__key__"], sample["png"]


def load_split(
    shard_dir: str | Path, split: str, resolution: int | None, limit: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Every image of a split as uint8 (N, H, W, 3) in memory, with its keys.

    The VAE trains on the embedded default's few hundred faces (a few MB at 64x64); at scale the
    VAE is pretrained and this is used only for the validation PSNR.
    """
    keys, images = [], []
    for path in shard_paths(shard_dir, split):
        for key, png in iter_shard(path):
            keys.append(key)
            images.append(decode_png(png, resolution))
            if limit is not None and len(keys) >= limit:
                return keys, np.stack(images)
    if not images:
        raise ValueError(f"{shard_dir} has no '{split}' images")
    return keys, np.stack(images)
