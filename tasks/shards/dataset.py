"""WebDataset shard writing and dataset manifests: the data contract every stage shares.

A dataset folder holds `<split>-NNNNNN.tar` shards and `manifest.json`. Shards are written to a
temporary name and renamed when complete, so a half-written shard is never visible; a folder
whose manifest is missing is an unfinished stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tasks.tracking.identity import identity

MANIFEST = "manifest.json"


def split_of(key: str, val_fraction: float) -> str:
    """Deterministic train/val assignment by a hash of the key (stable across runs and machines)."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# Tar entries as webdataset.TarWriter(mtime=0) writes them, so shards written before and after
# the switch to this writer are the same bytes: owner "bigdata", mode 0444, mtime 0, uid/gid 0,
# tarfile's PAX format (plain ustar headers for short ASCII names).
_TAR_OWNER = "bigdata"
_TAR_MODE = 0o444


def encode_field(ext: str, value: Any) -> bytes:
    """The bytes stored for one sample field, as webdataset's default encoder makes them: bytes as
    they are, str as UTF-8, `.json` values as JSON, `.npy` arrays in NumPy's .npy format."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    kind = ext.rsplit(".", 1)[-1].lower()
    if kind in ("json", "jsn"):
        return json.dumps(value).encode("utf-8")
    if kind == "npy":
        import numpy.lib.format  # here: only array samples need numpy

        buf = io.BytesIO()
        numpy.lib.format.write_array(buf, value)
        return buf.getvalue()
    raise ValueError(f"no encoding for field {ext!r} of type {type(value).__name__}: pass bytes")


def tar_entries(sample: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(`<key>.<ext>`, bytes) per field of a sample dict with `__key__`. Fields starting with `_`
    (`__key__`, `__url__`) are metadata, not stored. Entries go in sorted field order, as
    webdataset writes them; readers group entries by key, so any order reads back the same."""
    if "__key__" not in sample:
        raise ValueError("a sample needs a __key__")
    key = sample["__key__"]
    return [(f"{key}.{ext}", encode_field(ext, sample[ext])) for ext in sorted(sample) if not ext.startswith("_")]


class TarShardWriter:
    """A deterministic tar of samples: the same samples give the same bytes (mtime 0, fixed owner
    and mode), in the layout webdataset readers expect. Python's tarfile only, so writing a shard
    does not import webdataset (and with it torch, ~2 s of CPU per process)."""

    def __init__(self, path: str | Path):
        self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)

    def write(self, sample: dict[str, Any]) -> None:
        for name, data in tar_entries(sample):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, _TAR_MODE
            info.uname = info.gname = _TAR_OWNER
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


_BLOCK = 512


def plain_tar_members(tar: bytes | memoryview) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of each member of the uncompressed tar held in `tar`, or None
    unless every member is a regular file under a plain header (ASCII name in the name field,
    octal size, valid checksum): what TarShardWriter writes for names of up to 100 characters.

    Parsing that directly costs a few microseconds a member, against ~40 for reading through
    tarfile; None sends the caller to tarfile for everything else (long or non-ASCII names, links,
    compression, damage), so nothing it accepts is read differently.
    """
    members, pos, end = [], 0, len(tar)
    while pos + _BLOCK <= end:
        header = bytes(tar[pos : pos + _BLOCK])
        if not any(header):  # end-of-archive marker
            return members
        if header[156:157] not in (b"0", b"\0") or header[345:346] != b"\0":  # not a regular file, or a ustar prefix
            return None
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            checksum = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:  # base-256 numbers or garbage
            return None
        if checksum != 256 + sum(header) - sum(header[148:156]):
            return None
        name = header[:100].split(b"\0", 1)[0]
        if not name.isascii() or not name or name.endswith(b"/"):
            return None
        if pos + _BLOCK + size > end:  # truncated: tarfile reports it
            return None
        members.append((name.decode("ascii"), pos + _BLOCK, size))
        pos += _BLOCK + -(-size // _BLOCK) * _BLOCK
    return members if pos == end else None


class AtomicShardWriter:
    """Writes samples into `<split>-NNNNNN.tar` shards of at most `max_count` samples.

    Each shard goes to `<name>.tmp` and is renamed into place only once closed. TarShardWriter
    keeps the tar bytes identical across runs, so DVC sees the same content for the same input.
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
        self._writer: TarShardWriter | None = None  # the shard being written
        self._tmp: Path | None = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            self._open()
        self._writer.write(sample)
        self.count += 1
        if self.count == self.max_count:
            self._finish()

    def _open(self) -> None:
        self._tmp = self.out_dir / (shard_name(self.split, self.index) + ".tmp")
        self._writer = TarShardWriter(self._tmp)

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

    def __enter__(self) -> AtomicShardWriter:
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
        raise FileNotFoundError(f"{path} is missing: {dataset_dir} is not a finished dataset (run its stage first)")
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


# Resumable stages (align_faces, encode_latents, sample_class): one protocol, ResumableShards. A
# stage names every shard it will write with the fingerprint of everything that makes its bytes
# (inputs, params, code: tasks.tracking.identity). A shard is finished once its tar is in place
# (AtomicShardWriter) and its record, with that fingerprint, is in `.progress/<shard>.json`. A run
# returns at once when the folder holds the finished output of the same fingerprints (`completed`),
# else keeps the shards finished with the same fingerprint and deletes everything else (`resume`),
# writes the rest (`write`) and ends with the manifest, which drops the records (`finalise`).
PROGRESS = ".progress"


class ResumableShards:
    def __init__(
        self, out_dir: str | Path, fingerprints: dict[str, str], on_shard: Callable[[str], None] | None = None
    ):
        self.out_dir, self.fingerprints, self.on_shard = Path(out_dir), fingerprints, on_shard
        self.fingerprint = identity(sorted(fingerprints.items()))  # the run's: goes in the manifest
        self.done: dict[str, dict] = {}  # {shard name: record} of the finished shards
        self.removed = 0  # files `resume` deleted

    def completed(self) -> dict[str, Any] | None:
        """The manifest, if the folder already holds the finished output of this run."""
        try:
            manifest = json.loads((self.out_dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("fingerprint") == self.fingerprint and all(
            (self.out_dir / n).is_file() for n in manifest.get("all_shards", [])
        ):
            return manifest
        return None

    def finished(self) -> dict[str, dict]:
        """{shard name: record} for the shards finished (by any run) with this run's fingerprints."""
        done = {}
        for name, fp in self.fingerprints.items():
            try:
                rec = json.loads((self.out_dir / PROGRESS / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
            if rec.get("fingerprint") == fp and (rec.get("count") == 0 or (self.out_dir / name).is_file()):
                done[name] = rec
        return done

    def resume(self, clean: bool = True, barrier: Callable[[], None] = lambda: None) -> dict[str, dict]:
        """Keep what an earlier run finished with the same fingerprints (returned, as `done`) and
        delete everything else: half-written .tmp files, shards of other inputs, an old manifest.
        Several processes: all read the records, then the one with `clean` deletes."""
        self.done = self.finished()
        barrier()
        if clean:
            for p in self.out_dir.iterdir():
                if p.name != PROGRESS and p.name not in self.done:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    self.removed += 1
            for p in (self.out_dir / PROGRESS).glob("*"):
                if p.name.removesuffix(".json") not in self.done:
                    p.unlink()
                    self.removed += 1
        barrier()
        return self.done

    def write(self, split: str, index: int, samples: Iterable[dict[str, Any]], record: dict | None = None) -> dict:
        """Write shard `<split>-<index>.tar` (no file when `samples` is empty) and mark it finished
        with `record` and its count and fingerprint; returns that record."""
        name = shard_name(split, index)
        with AtomicShardWriter(self.out_dir, split, max_count=sys.maxsize, start_index=index) as writer:
            for sample in samples:
                writer.write(sample)
        rec = {**(record or {}), "count": sum(writer.shard_counts), "fingerprint": self.fingerprints[name]}
        (self.out_dir / PROGRESS).mkdir(exist_ok=True)
        write_json_atomic(self.out_dir / PROGRESS / f"{name}.json", rec)
        self.done[name] = rec
        if self.on_shard is not None:
            self.on_shard(name)
        return rec

    def records(self) -> dict[str, dict]:
        """Every shard's record, read back (other processes wrote some); an error if one is missing."""
        done = self.finished()
        if missing := [n for n in self.fingerprints if n not in done]:
            raise RuntimeError(f"{self.out_dir}: shards not finished: {missing[:5]}")
        return done

    def finalise(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Write the manifest (it carries this run's fingerprint) and drop the progress records."""
        if manifest.get("fingerprint") != self.fingerprint:
            raise ValueError("the manifest must carry the run's fingerprint, or no rerun finds it complete")
        write_manifest(self.out_dir, manifest)
        shutil.rmtree(self.out_dir / PROGRESS, ignore_errors=True)
        return manifest
