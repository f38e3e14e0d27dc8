"""Downloads that resume, retry and verify, and archive extraction that cannot escape its target.

Used by every fetch stage. `file://` URLs go through the same code path as HTTP(S) (tests and
local mirrors use them).
"""
from __future__ import annotations

import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from tasks.common.hashing import file_digest

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The file could not be fetched (after retries), or what arrived is not the expected file."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would land outside the target folder or is a link or special file."""


def verify_file(path: Path, *, size: int | None = None, md5: str | None = None,
                sha256: str | None = None) -> None:
    """Raise DownloadError naming the first check `path` fails."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path.name}: size {actual} bytes, expected {size} (truncated or wrong file)")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise DownloadError(f"{path.name}: {algorithm} {got}, expected {expected}")


def _open(url: str, offset: int, timeout: float) -> tuple[BinaryIO, int | None, bool]:
    """Open `url` at byte `offset`. Returns (stream, total size if known, whether it resumed)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = urllib.request.url2pathname(parsed.path)
        f = open(path, "rb")
        total = os.fstat(f.fileno()).st_size
        f.seek(offset)
        return f, total, True
    request = urllib.request.Request(url, headers={"User-Agent": "facediff-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    response = urllib.request.urlopen(request, timeout=timeout)
    resumed = response.status == 206
    length = response.headers.get("Content-Length")
    total = (int(length) + (offset if resumed else 0)) if length else None
    return response, total, resumed


def download_file(url: str, dest: str | Path, *, size: int | None = None, md5: str | None = None,
                  sha256: str | None = None, retries: int = 3, backoff: float = 2.0,
                  timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` if present; verify; then rename into place.

    A `dest` that already exists and verifies is kept as it is. A file that fails verification is
    deleted and never renamed to `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_file(dest, size=size, md5=md5, sha256=sha256)
            return dest
        except DownloadError:
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _fetch_into(url, part, size, timeout, progress)
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last_error = exc
    else:
        hint = " (no network here? put the file there yourself, or point the source at a local copy)"
        raise DownloadError(
            f"could not download {url} after {retries + 1} attempts: {last_error}; "
            f"partial data kept in {part}{hint}"
        ) from last_error
    try:
        verify_file(part, size=size, md5=md5, sha256=sha256)
    except DownloadError:
        part.unlink()
        raise
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, size: int | None, timeout: float, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    stream, total, resumed = _open(url, offset, timeout)
    if not resumed:
        offset = 0  # the server ignored the Range request: start over
    total = size or total
    with stream, open(part, "ab" if offset else "wb") as out, tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=Path(urllib.parse.urlparse(url).path).name, disable=not progress, leave=False,
    ) as bar:
        while block := stream.read(CHUNK):
            out.write(block)
            bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise urllib.error.URLError(f"connection closed at {got} of {total} bytes")


def safe_extract(archive: str | Path, target: str | Path) -> list[str]:
    """Extract a tar archive into `target`, refusing links, special files and escaping paths.

    Every member is checked before anything is written, so a refused archive leaves nothing behind.
    Returns the names of the regular files extracted.
    """
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    kind = "link" if (m.issym() or m.islnk()) else "special file"
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a {kind}; refusing to extract")
                dest = (target / m.name).resolve()
                if os.path.isabs(m.name) or not dest.is_relative_to(target):
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} escapes {target}; refusing to extract")
            tar.extractall(target, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a complete tar archive: {exc}") from exc
    return [m.name for m in members if m.isfile()]


def copy_or_link(src: Path, dst: Path) -> None:
    """Hard-link when on the same filesystem (free), copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
