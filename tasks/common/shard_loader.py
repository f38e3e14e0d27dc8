"""Batches from WebDataset shards, the one loading mechanism every dataset of the project uses.

Deterministic for (seed, epoch): shard order and the shuffle buffer are seeded by (seed, epoch,
rank, DataLoader worker). Each process of a multi-process run reads its own shards
(`shards[rank::world_size]`), and every rank stops after the same number of batches, so
distributed training never waits on a rank that ran out of data. Datasets differ only in how a
raw sample becomes tensors (`to_tensors`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from tasks.common.shards import read_manifest, shard_paths


def count_batches(shard_counts: list[int], batch_size: int, workers: int, drop_last: bool) -> int:
    """Batches one rank yields: DataLoader workers each batch their own shards (split_by_worker)."""
    total, w = 0, max(workers, 1)
    for i in range(w):
        n = sum(shard_counts[i::w])
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


class ShardLoader:
    """Iterable of collated batches of `to_tensors(sample)`; `len()` is batches per epoch per rank.

    `decode=True` lets webdataset decode entries by extension first (.npy -> array, .json -> obj).
    `finish_batch(batch)` runs on each collated batch in the main process: work that is one array
    operation per batch (dtype conversion, one-hot) instead of one per sample in the workers.
    """

    def __init__(self, shard_dir: str | Path, split: str, to_tensors: Callable[[dict], dict], *,
                 batch_size: int = 64, shuffle_buffer: int = 1000, workers: int = 0, seed: int = 0,
                 epoch: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 shuffle: bool = True, decode: bool = False, finish_batch: Callable[[dict], dict] | None = None):
        self.manifest = read_manifest(shard_dir)
        self.finish_batch = finish_batch
        if split not in self.manifest.get("splits", {}):
            raise KeyError(f"{shard_dir} has no split {split!r}")
        shards = list(zip(shard_paths(shard_dir, split), self.manifest["splits"][split]["shard_counts"]))
        if world_size > len(shards):
            raise ValueError(f"{len(shards)} {split} shard(s) cannot feed {world_size} processes: "
                             "write smaller shards (the upstream stage's shard_size) or use fewer processes")
        self.workers = min(workers, len(shards) // world_size)

        def rank_shards(r: int) -> list[tuple[str, int]]:
            own = shards[r::world_size]
            if shuffle:
                random.Random(f"{seed}-{epoch}-{r}").shuffle(own)
            return own

        self.num_batches = min(
            count_batches([c for _, c in rank_shards(r)], batch_size, self.workers, drop_last)
            for r in range(world_size)
        )
        dataset = wds.WebDataset([p for p, _ in rank_shards(rank)], shardshuffle=False, nodesplitter=_identity,
                                 workersplitter=wds.split_by_worker, empty_check=False)
        if decode:
            dataset = dataset.decode()
        if shuffle and shuffle_buffer > 1:
            dataset = dataset.compose(_SeededShuffle(shuffle_buffer, seed, epoch, rank))
        dataset = dataset.map(to_tensors)
        self._loader = DataLoader(dataset, batch_size=batch_size, num_workers=self.workers,
                                  drop_last=drop_last, persistent_workers=False)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for i, batch in enumerate(self._loader):
            if i == self.num_batches:
                break
            yield self.finish_batch(batch) if self.finish_batch else batch
