"""Batches from WebDataset shards, the one loading mechanism every dataset of the project uses.

Deterministic for (seed, epoch): shard order and the shuffle buffer are seeded by (seed, epoch,
rank, DataLoader worker). Each process of a multi-process run reads its own shards
(`shards[rank::world_size]`), and every rank stops after the same number of batches, so
distributed training never waits on a rank that ran out of data. Datasets differ only in how a
raw sample becomes arrays (`to_tensors`) and, optionally, how a list of those becomes a batch
(`collate`).

Batches are made inside the webdataset pipeline, in the DataLoader worker that read the samples
(the DataLoader only passes them on): the same batches the DataLoader's own batching made, with a
dataset's `collate` free to stack numpy arrays instead of building a tensor per sample.
"""

from __future__ import annotations

import mmap
import random
import re
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import webdataset as wds
from torch.utils.data import DataLoader, default_collate, get_worker_info
from webdataset.cache import StreamingOpen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from tasks.shards.dataset import plain_tar_members, read_manifest, shard_paths


def count_batches(shard_counts: list[int], batch_size: int, workers: int, drop_last: bool) -> int:
    """Batches one rank yields: DataLoader workers each batch their own shards (split_by_worker)."""
    total, w = 0, max(workers, 1)
    for i in range(w):
        n = sum(shard_counts[i::w])
        total += n // batch_size if drop_last else -(-n // batch_size)
    return total


class _SeededShuffle:
    """Sample shuffle buffer seeded by (seed, epoch, rank, worker): reproducible with any workers."""

    def __init__(self, bufsize: int, seed: int, epoch: int, rank: int):
        self.bufsize, self.seed, self.epoch, self.rank = bufsize, seed, epoch, rank

    def __call__(self, samples):
        info = get_worker_info()
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{info.id if info else 0}")
        return wds.filters._shuffle(samples, self.bufsize, min(self.bufsize, 100), rng)


class ShardDataError(ValueError):
    """A shard that does not hold what its manifest says: truncated, damaged or replaced."""


def _damaged(url: str, what: str) -> ShardDataError:
    folder = Path(urlparse(url).path).parent
    return ShardDataError(
        f"{url}: {what}. The shard was damaged or changed after its stage wrote it: restore it "
        f"(`dvc checkout {folder}`) or re-run the stage that writes {folder}"
    )


def _tar_files(sources: Iterator[dict], counts: dict[str, int]) -> Iterator[dict]:
    """The files of each shard as webdataset's `tar_file_expander` yields them ({fname, data,
    __url__, __local_path__}, then `{}` at the end of each shard), with plain local shards (what
    AtomicShardWriter writes) parsed directly instead of through tarfile: ~20 us a cartoon sample
    (two files, grouping included) instead of ~90, which was a third of its cost at 64 px.
    Anything else goes to webdataset's own reader.

    Each shard must hold the `counts[url]` samples its manifest lists: a shard cut at a member
    boundary reads as a valid, shorter tar, and would silently train on less."""
    for source in sources:
        url = source["url"]
        keys: set[str] = set()
        for entry in _shard_files(source):
            if entry:
                keys.add(base_plus_ext(entry["fname"])[0])
            yield entry
        if len(keys) != counts[url]:
            raise _damaged(url, f"{len(keys)} samples where the manifest lists {counts[url]}")


def _shard_files(source: dict) -> Iterator[dict]:
    url = source["url"]
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        with _mapped(parsed.path) as tar:
            members = plain_tar_members(tar) if tar is not None else None
            if members is not None:
                for name, start, size in members:
                    if not _is_meta(name):
                        yield {
                            "fname": name,
                            "data": tar[start : start + size],
                            "__url__": url,
                            "__local_path__": parsed.path,
                        }
                yield {}
                return
    try:
        yield from tar_file_expander(StreamingOpen()([source]))
    except tarfile.TarError as err:
        raise _damaged(url, f"not a readable tar ({err.args[0] if err.args else err})") from None


@contextmanager
def _mapped(path: str) -> Iterator[mmap.mmap | None]:
    """The file mapped read-only (pages are read as members are sliced out), None when empty."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            yield None
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as tar:
            yield tar


_META = re.compile(r"__[^/]*__($|/)")


def _is_meta(name: str) -> bool:
    """Names webdataset's tar reader skips (metadata files such as __index__)."""
    return ("/" not in name and name.startswith("__") and name.endswith("__")) or bool(_META.match(name))


def _named_errors(to_tensors: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """`to_tensors` whose failure on a sample (an image that does not decode) names the shard and key."""

    def convert(sample: dict) -> Any:
        try:
            return to_tensors(sample)
        except Exception as err:  # noqa: BLE001 - re-raised with where it happened
            raise _damaged(
                sample.get("__url__", "?"),
                f"sample {sample.get('__key__')!r} cannot be read ({type(err).__name__}: {err})",
            ) from err

    return convert


def _forget_parent_exit_hooks(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: a worker is a fork of the training process and must not run
    that process's thread-exit hooks when it ends. Prefect (3.8) registers one per service and,
    after its own fork reset, that hook fails an assert: a worker that runs out of shards before
    the others (uneven shards, e.g. 9 samples in shards of 8) exited with code 1, and torch stopped
    the run with "DataLoader worker exited unexpectedly". The worker's own data needs none of them."""
    getattr(threading, "_threading_atexits", []).clear()


class _ShardPipeline(wds.DataPipeline, wds.FluidInterface):
    """wds.WebDataset's stages for a fixed, already ordered shard list (no shard shuffle, no
    node split, no cache), reading shards with `_tar_files`."""

    def __init__(self, shards: list[tuple[str, int]]):
        counts = dict(shards)
        super().__init__(
            wds.SimpleShardList([url for url, _ in shards]),
            wds.split_by_worker,
            partial(_tar_files, counts=counts),
            group_by_keys,
        )


class ShardLoader:
    """Iterable of batches of `to_tensors(sample)`; `len()` is batches per epoch per rank.

    `decode=True` lets webdataset decode entries by extension first (.npy -> array, .json -> obj).
    `collate(list of to_tensors outputs)` makes a batch (default: torch's default_collate, which
    the DataLoader's own batching uses). `finish_batch(batch)` runs on each batch in the main
    process: work that is one array operation per batch (dtype conversion, one-hot) instead of
    one per sample in the workers.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        to_tensors: Callable[[dict], Any],
        *,
        batch_size: int = 64,
        shuffle_buffer: int = 1000,
        workers: int = 0,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        shuffle: bool = True,
        decode: bool = False,
        finish_batch: Callable[[Any], Any] | None = None,
        collate: Callable[[list], Any] = default_collate,
    ):
        self.manifest = read_manifest(shard_dir)
        self.finish_batch = finish_batch
        if split not in self.manifest.get("splits", {}):
            raise KeyError(f"{shard_dir} has no split {split!r}")
        shards = list(zip(shard_paths(shard_dir, split), self.manifest["splits"][split]["shard_counts"]))
        if world_size > len(shards):
            raise ValueError(
                f"{len(shards)} {split} shard(s) cannot feed {world_size} processes: "
                "write smaller shards (the upstream stage's shard_size) or use fewer processes"
            )
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
        dataset = _ShardPipeline(rank_shards(rank))
        if decode:
            dataset = dataset.decode()
        if shuffle and shuffle_buffer > 1:
            dataset = dataset.compose(_SeededShuffle(shuffle_buffer, seed, epoch, rank))
        # Batched per worker, a partial last batch kept unless drop_last: what DataLoader(batch_size=
        # batch_size, drop_last=drop_last) did with an iterable dataset.
        dataset = dataset.map(_named_errors(to_tensors)).batched(
            batch_size, collation_fn=collate, partial=not drop_last
        )
        self._loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.workers,
            persistent_workers=False,
            worker_init_fn=_forget_parent_exit_hooks if self.workers else None,
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for i, batch in enumerate(self._loader):
            if i == self.num_batches:
                break
            yield self.finish_batch(batch) if self.finish_batch else batch
