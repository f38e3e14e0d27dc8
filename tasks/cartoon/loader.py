"""Training batches from cartoon shards: images in [-1, 1] (NCHW float32) and one-hot attributes.

Shard order, shuffling, ranks and workers: tasks/common/shard_loader.py.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.cartoon.schema import AttributeSchema
from tasks.common.shard_loader import ShardLoader
from tasks.common.shards import read_manifest


def load_schema(shard_dir: str | Path) -> AttributeSchema:
    return AttributeSchema.from_json(read_manifest(shard_dir)["schema"])


def decode_image(png: bytes) -> torch.Tensor:
    """uint8 PNG -> float32 (3, H, W) in [-1, 1]."""
    array = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div_(127.5).sub_(1.0)


class _ToTensors:
    def __init__(self, schema: AttributeSchema):
        self.schema = schema

    def __call__(self, sample: dict) -> dict:
        attrs = json.loads(sample["attrs.json"])
        return {
            "image": decode_image(sample["png"]),
            "onehot": torch.from_numpy(self.schema.one_hot(attrs)),
            "attrs": torch.tensor(attrs, dtype=torch.int64),
            "key": sample["__key__"],
        }


class CartoonLoader(ShardLoader):
    """Batch dicts: `image` (B, 3, H, W) in [-1, 1], `onehot` (B, width), `attrs` (B, 18), `key`."""

    def __init__(self, shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs):
        self.schema = load_schema(shard_dir)
        super().__init__(shard_dir, split, _ToTensors(self.schema), batch_size=batch_size, **kwargs)


def cartoon_loader(shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs) -> CartoonLoader:
    """See CartoonLoader; keyword arguments: shuffle_buffer, workers, seed, epoch, rank, world_size,
    drop_last, shuffle."""
    return CartoonLoader(shard_dir, split, batch_size, **kwargs)
