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

from pipelines.cartoon import one_hot
from tasks.cartoon.schema import AttributeSchema
from tasks.common.shard_loader import ShardLoader
from tasks.common.shards import read_manifest


def load_schema(shard_dir: str | Path) -> AttributeSchema:
    return AttributeSchema.from_json(read_manifest(shard_dir)["schema"])


def decode_image(png: bytes) -> torch.Tensor:
    """uint8 PNG -> uint8 (H, W, 3): the per-sample part, run in DataLoader workers."""
    image = Image.open(io.BytesIO(png))
    if image.mode != "RGB":  # the shards hold RGB; anything else is converted, not misread
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image))  # a writable copy (12 KB at 64 px)


class _ToTensors:
    """Per sample only what must be: PNG decode and JSON parse. Everything that can work on a
    whole batch (float conversion, one-hot) waits for `_finish_batch`, so it runs as a few array
    operations per batch and DataLoader workers send uint8 images (a quarter of float32's bytes)."""

    def __call__(self, sample: dict) -> dict:
        attrs = json.loads(sample["attrs.json"])
        return {"image": decode_image(sample["png"]), "attrs": torch.tensor(attrs, dtype=torch.int64),
                "key": sample["__key__"]}


class _FinishBatch:
    def __init__(self, schema: AttributeSchema):
        self.schema = schema

    def __call__(self, batch: dict) -> dict:
        # NHWC uint8 -> NCHW first (cheap on bytes), then one conversion: the same arithmetic per
        # pixel as converting each image alone, so the same floats
        images = batch["image"].permute(0, 3, 1, 2).contiguous().float().div_(127.5).sub_(1.0)
        onehot = torch.from_numpy(one_hot(batch["attrs"].numpy(), self.schema.counts))
        return {"image": images, "onehot": onehot, "attrs": batch["attrs"], "key": batch["key"]}


class CartoonLoader(ShardLoader):
    """Batch dicts: `image` (B, 3, H, W) in [-1, 1], `onehot` (B, width), `attrs` (B, 18), `key`."""

    def __init__(self, shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs):
        self.schema = load_schema(shard_dir)
        super().__init__(shard_dir, split, _ToTensors(), batch_size=batch_size, finish_batch=_FinishBatch(self.schema),
                         **kwargs)


def cartoon_loader(shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs) -> CartoonLoader:
    """See CartoonLoader; keyword arguments: shuffle_buffer, workers, seed, epoch, rank, world_size,
    drop_last, shuffle."""
    return CartoonLoader(shard_dir, split, batch_size, **kwargs)
