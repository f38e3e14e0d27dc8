"""Training batches from latent shards: z = mean + std * eps, drawn afresh every epoch.

Deterministic for (seed, epoch): the eps of each sample and the choice of its flipped copy are
seeded by (seed, epoch) and the sample's key, so a resumed run sees exactly the batches an
uninterrupted one would. Shard order, shuffling, ranks and workers: tasks/shards/loader.py.
The scaling factor is applied by the trainer, not here (the loader yields raw latents).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.shards.dataset import read_manifest
from tasks.shards.loader import ShardLoader
from tasks.tracking.hashing import derive_seed


class _ToTensors:
    """Decoded sample -> {latent, mean, key}: picks the flipped copy with probability
    `flip_prob` (when stored) and draws eps from the sample's own seed."""

    def __init__(self, seed: int, epoch: int, sample: bool, flip_prob: float):
        self.seed, self.epoch, self.sample, self.flip_prob = seed, epoch, sample, flip_prob

    def __call__(self, s: dict) -> dict:
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch, s["__key__"]))
        use_flip = "mean_flip.npy" in s and rng.random() < self.flip_prob
        mean = s["mean_flip.npy" if use_flip else "mean.npy"].astype(np.float32)
        std = s["std_flip.npy" if use_flip else "std.npy"].astype(np.float32)
        z = mean + std * rng.standard_normal(mean.shape, dtype=np.float32) if self.sample else mean
        return {"latent": torch.from_numpy(z), "mean": torch.from_numpy(mean), "key": s["__key__"], "flipped": use_flip}


class LatentLoader(ShardLoader):
    """Batch dicts: `latent` float32 (B, C, h, w), `mean`, `key`, `flipped`; `len()` is batches per
    epoch for this rank."""

    def __init__(
        self,
        shard_dir: str | Path,
        split: str = "train",
        batch_size: int = 64,
        *,
        seed: int = 0,
        epoch: int = 0,
        sample: bool = True,
        flip_prob: float = 0.5,
        **kwargs,
    ):
        kind = read_manifest(shard_dir).get("kind")
        if kind != "faces_latents":
            raise ValueError(f"{shard_dir} is not a latent dataset (kind {kind!r})")
        super().__init__(
            shard_dir,
            split,
            _ToTensors(seed, epoch, sample, flip_prob),
            batch_size=batch_size,
            seed=seed,
            epoch=epoch,
            decode=True,
            **kwargs,
        )


def latent_loader(shard_dir: str | Path, split: str = "train", batch_size: int = 64, **kwargs) -> LatentLoader:
    """See LatentLoader; keyword arguments: shuffle_buffer, workers, seed, epoch, rank, world_size,
    drop_last, shuffle, sample, flip_prob."""
    return LatentLoader(shard_dir, split, batch_size, **kwargs)
