"""The one file hasher: a streamed digest, so a multi-gigabyte archive never sits in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (`algorithm`: any hashlib name; md5 where a format records md5s)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def derive_seed(*parts) -> int:
    """A 64-bit seed named by `parts` (stable across runs, machines and Python versions, unlike
    `hash()`): independent streams for (seed, epoch, key), (seed, identity), ..."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")
