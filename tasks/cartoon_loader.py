"""Training batches from cartoon shards: images in [-1, 1] (NCHW float32) and one-hot attributes.

Deterministic for (seed, epoch). Each process of a multi-process run reads its own shards
(`shards[rank::world_size]`), and every rank stops after the same number of batches, so
distributed training never waits on a rank that ran out of data.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from tasks.cartoon_schema import AttributeSchema
from tasks.shards import read_manifest, shard_paths


def load_schema(shard_dir: str | Path) -> AttributeSchema:
    return AttributeSchema.from_json(read_manifest(shard_dir)["schema"])


def decode_image(png: bytes) -> torch.Tensor:
    """uint8 PNG -> float32 (3, H, W) in [-1, 1]."""
    array = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div_(127.5).sub_(1.0)


def count_batches(shard_counts: list[int], batch_size: int, workers: int, drop_last: bool) -> int:
    """Batches one rank yields: DataLoader workers each batch their own shards (split_by_worker)."""
    total = 0
    for w in range(max(workers, 1)):
        n = sum(shard_counts[w::max(workers, 1)])
        total += n // batch_size if drop_last else -(-n // batch_size)
    return total


def _identity(urls):
    return urls


class _SeededShuffle:
    """Sample shuffle buffer seeded by (seed, epoch, rank, worker): reproducible with any workers."""

    def __init__(self, bufsize: int, seed: int, epoch: int, rank: int):
        self.bufsize, self.seed, self.epoch, self.rank = bufsize, seed, epoch, rank

    def __call__(self, samples):
        info = get_worker_info()
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{info.id if info else 0}")
        return wds.filters._shuffle(samples, self.bufsize, min(self.bufsize, 100), rng)


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


class CartoonLoader:
    """Iterable of batch dicts (`image`, `onehot`, `attrs`, `key`); `len()` is batches per epoch."""

    def __init__(self, shard_dir: str | Path, split: str = "train", batch_size: int = 64,
                 shuffle_buffer: int = 1000, workers: int = 0, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, shuffle: bool = True):
        manifest = read_manifest(shard_dir)
        self.schema = AttributeSchema.from_json(manifest["schema"])
        shards = list(zip(shard_paths(shard_dir, split), manifest["splits"][split]["shard_counts"]))
        if world_size > len(shards):
            raise ValueError(f"{len(shards)} {split} shard(s) cannot feed {world_size} processes: "
                             "write smaller shards (preprocess shard_size) or use fewer processes")
        self.workers = min(workers, len(shards) // world_size)

        def rank_shards(r: int) -> list[tuple[str, int]]:
            own = shards[r::world_size]
            if shuffle:
                random.Random(f"{seed}-{epoch}-{r}").shuffle(own)
            return own

        # Every rank stops after as many batches as the smallest rank has.
        self.num_batches = min(
            count_batches([c for _, c in rank_shards(r)], batch_size, self.workers, drop_last)
            for r in range(world_size)
        )
        dataset = wds.WebDataset([p for p, _ in rank_shards(rank)], shardshuffle=False, nodesplitter=_identity,
                                 workersplitter=wds.split_by_worker, empty_check=False)
        if shuffle and shuffle_buffer > 1:
            dataset = dataset.compose(_SeededShuffle(shuffle_buffer, seed, epoch, rank))
        dataset = dataset.map(_ToTensors(self.schema))
        self._loader = DataLoader(dataset, batch_size=batch_size, num_workers=self.workers,
                                  drop_last=drop_last, persistent_workers=False)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for i, batch in enumerate(self._loader):
            if i == self.num_batches:
                break
            yield batch


def cartoon_loader(shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs) -> CartoonLoader:
    """See CartoonLoader; keyword arguments: shuffle_buffer, workers, seed, epoch, rank, world_size,
    drop_last, shuffle."""
    return CartoonLoader(shard_dir, split, batch_size, **kwargs)
