"""WebDataset shard writing and dataset manifests: the data contract every stage shares.

A dataset folder holds `<split>-NNNNNN.tar` shards and `manifest.json`. Shards are written to a
temporary name and renamed when complete, so a half-written shard is never visible; a folder
whose manifest is missing is an unfinished stage.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

MANIFEST = "manifest.json"


def split_of(key: str, val_fraction: float) -> str:
    """Deterministic train/val assignment by a hash of the key (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


class AtomicShardWriter:
    """Writes samples into `<split>-NNNNNN.tar` shards of at most `max_count` samples.

    Each shard goes to `<name>.tmp` and is renamed into place only once closed. `mtime=0` keeps
    the tar bytes identical across runs, so DVC sees the same content for the same input.
    """

    def __init__(self, out_dir: str | Path, split: str, max_count: int, start_index: int = 0):
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.max_count = split, max_count
        self.index = start_index
        self.count = 0
        self.shards: list[str] = []
        self.shard_counts: list[int] = []
        self._writer = None  # webdataset.TarWriter of the shard being written
        self._tmp: Path | None = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self.count += 1
        if self.count == self.max_count:
            self._finish()

    def _open(self) -> None:
        import webdataset as wds  # here, not at the top: it imports torch (~1.5 s per spawned worker)

        self._tmp = self.out_dir / (shard_name(self.split, self.index) + ".tmp")
        self._writer = wds.TarWriter(str(self._tmp), mtime=0)

    def _finish(self) -> None:
        self._writer.close()
        final = self.out_dir / shard_name(self.split, self.index)
        os.replace(self._tmp, final)
        self.shards.append(final.name)
        self.shard_counts.append(self.count)
        self._writer, self._tmp = None, None
        self.index += 1
        self.count = 0

    def close(self) -> dict[str, Any]:
        """Finish the last shard; returns this split's manifest entry."""
        if self._writer is not None:
            self._finish()
        return {"count": sum(self.shard_counts), "shards": self.shards, "shard_counts": self.shard_counts}

    def abort(self) -> None:
        """Drop the shard being written (used when the stage fails midway)."""
        if self._writer is not None:
            self._writer.close()
            self._tmp.unlink(missing_ok=True)
            self._writer, self._tmp = None, None

    def __enter__(self) -> "AtomicShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type else self.close()


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    write_json_atomic(path, manifest)
    return path


def read_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {dataset_dir} is not a finished dataset (run its stage first)"
        )
    with open(path) as f:
        return json.load(f)


def shard_paths(dataset_dir: str | Path, split: str) -> list[str]:
    """The shard files of one split, as listed by the manifest (the source of truth)."""
    manifest = read_manifest(dataset_dir)
    try:
        names: Iterable[str] = manifest["splits"][split]["shards"]
    except KeyError:
        raise KeyError(f"{dataset_dir}/{MANIFEST} has no split '{split}'") from None
    paths = [str(Path(dataset_dir) / n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"shards listed in the manifest are missing: {missing[:3]}")
    return paths


# Resumable stages: a shard counts as finished once its tar is in place and its record (with the
# fingerprint of everything that made it) is written to `.progress/<shard>.json`. A rerun keeps
# finished shards whose fingerprint still matches and redoes the rest; the records are removed
# when the manifest is written.
PROGRESS = ".progress"


def finished_shards(out_dir: str | Path, fingerprints: dict[str, str]) -> dict[str, dict]:
    """{shard name: record} for shards an earlier run finished with the same fingerprint."""
    out_dir, done = Path(out_dir), {}
    for name, fp in fingerprints.items():
        try:
            rec = json.loads((out_dir / PROGRESS / f"{name}.json").read_text())
        except (OSError, ValueError):
            continue
        if rec.get("fingerprint") == fp and (rec.get("count") == 0 or (out_dir / name).is_file()):
            done[name] = rec
    return done


def record_shard(out_dir: str | Path, name: str, record: dict[str, Any]) -> None:
    """Mark shard `name` finished; `record` must hold its `fingerprint` and `count`."""
    (Path(out_dir) / PROGRESS).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(out_dir) / PROGRESS / f"{name}.json", record)


def clean_stale(out_dir: str | Path, keep: set[str]) -> int:
    """Delete everything in `out_dir` but the finished shards in `keep` and their records
    (half-written .tmp files, shards of other inputs, an old manifest). Returns how many went."""
    out_dir, removed = Path(out_dir), 0
    for p in out_dir.iterdir():
        if p.name == PROGRESS or p.name in keep:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        removed += 1
    for p in (out_dir / PROGRESS).glob("*"):
        if p.name.removesuffix(".json") not in keep:
            p.unlink()
            removed += 1
    return removed


def clear_progress(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / PROGRESS, ignore_errors=True)


def run_fingerprint(fingerprints: dict[str, str]) -> str:
    """One fingerprint for a whole run: its shards' fingerprints together."""
    return hashlib.sha256(json.dumps(sorted(fingerprints.items())).encode()).hexdigest()[:24]


def completed_run(out_dir: str | Path, run_fp: str) -> dict[str, Any] | None:
    """The manifest, if `out_dir` already holds the finished output of the run `run_fp`."""
    out_dir = Path(out_dir)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") == run_fp and all((out_dir / n).is_file() for n in manifest.get("all_shards", [])):
        return manifest
    return None
