"""Stage fetch_cartoons: a Cartoon Set folder (csX.png + csX.csv) from one of three sources.

- `synthetic`: drawn here (tasks/synthetic/cartoons.py), deterministic for a seed, offline;
- `cartoonset10k` / `cartoonset100k`: the official archive, downloaded with resume, retries and
  checksum verification, then extracted safely;
- `folder`: the local folder or .tgz in the same format that `folder` names (a dvc.yaml dep).
"""

from __future__ import annotations

import datetime
import functools
import json
import shutil
import urllib.parse
from pathlib import Path

from tasks.cartoon.config import FetchCartoonsConfig
from tasks.download.fetch import DownloadError, copy_or_link, download_file, file_digest, safe_extract
from tasks.processes.pool import imap, process_pool
from tasks.reporting.log import get_logger
from tasks.reporting.progress import progress
from tasks.shards.dataset import write_json_atomic
from tasks.synthetic.cartoons import render_to_files

OFFICIAL = ("cartoonset10k", "cartoonset100k")
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar")


def render_synthetic(out_dir: str, num_images: int, seed: int, workers: int) -> int:
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    draw = functools.partial(render_to_files, out_dir, seed=seed)
    with process_pool(workers) as pool:
        for _ in progress(imap(pool, draw, range(num_images), 16), total=num_images, desc="drawing", unit="img"):
            pass
    return num_images


def download_archive(url: str, download_dir: str, sha256: str | None) -> tuple[str, dict]:
    """Fetch the archive into `download_dir`; returns (its path, its size, sha256 and what checked it).

    Verified by `sha256` when given. The publisher gives none, so otherwise the first download
    records its size and sha256 in `<archive>.json` beside it, and every later run (a kept archive,
    a re-download, a resumed one) must match that record. The record lives in `download_dir`
    because the stage's out, fetch.json with it, is deleted before each run.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "cartoonset.tgz"
    dest = Path(download_dir) / name
    pin_path = dest.with_name(name + ".json")
    pin = None if sha256 else _read_pin(pin_path)
    checks = {"sha256": sha256} if sha256 else {"size": pin["size"], "sha256": pin["sha256"]} if pin else {}
    try:
        path = download_file(url, dest, **checks)
    except DownloadError as exc:
        if pin is None:
            raise
        raise DownloadError(
            f"{exc} (checked against {pin_path}, recorded at the first download on "
            f"{pin['recorded']}; if the publisher changed the archive, delete that file "
            f"to accept the new one)"
        ) from None
    size = path.stat().st_size
    if sha256:
        return str(path), {"size": size, "sha256": sha256, "checksum": "params"}
    if pin:
        return str(path), {
            "size": size,
            "sha256": pin["sha256"],
            "checksum": f"first download's record ({pin_path}, {pin['recorded']})",
        }
    digest = file_digest(path, "sha256")
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    write_json_atomic(pin_path, {"url": url, "size": size, "sha256": digest, "recorded": today})
    get_logger().warning(
        "no sha256 given for %s: recorded its size (%d) and sha256 (%s) in %s; later runs "
        "must match them (or set fetch_cartoons.sha256 in params)",
        name,
        size,
        digest,
        pin_path,
    )
    return str(path), {"size": size, "sha256": digest, "checksum": f"recorded now in {pin_path}"}


def _read_pin(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def import_local(path: str, out_dir: str) -> int:
    """Hard-link (or copy) every csX.png/csX.csv of a folder, or safely extract an archive."""
    src = Path(path)
    if src.is_file() and src.name.endswith(ARCHIVE_SUFFIXES):
        return len(safe_extract(src, out_dir))
    if not src.is_dir():
        raise FileNotFoundError(
            f"fetch_cartoons.folder {path!r} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive"
        )
    files = [p for p in sorted(src.rglob("*")) if p.suffix in (".png", ".csv") and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{src} holds no .png/.csv files")
    for p in progress(files, desc="importing", unit="file"):
        dest = Path(out_dir) / p.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_or_link(p, dest)
    return len(files)


def fetch_cartoons(out_dir: str, config: FetchCartoonsConfig, download_dir: str) -> dict:
    """Write the Cartoon Set folder `out_dir`; returns what it records in `out_dir/fetch.json`."""
    log = get_logger()
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source, urls, sha256 = config.source, config.urls, config.sha256
    record: dict = {"source": source}
    if source == "synthetic":
        record.update(
            num_images=render_synthetic(out_dir, config.num_images, config.seed, config.workers), seed=config.seed
        )
    elif source in OFFICIAL:
        url = (urls or {}).get(source)
        if not url:
            raise KeyError(f"params fetch_cartoons.urls has no URL for {source}")
        archive, info = download_archive(url, download_dir, (sha256 or {}).get(source))
        record.update(
            url=url,
            archive_size=info["size"],
            archive_sha256=info["sha256"],
            archive_checksum=info["checksum"],
            files=len(safe_extract(archive, out_dir)),
        )
    elif source == "folder":
        record.update(folder=config.folder, files=import_local(config.folder, out_dir))
    else:
        raise ValueError(
            f"fetch_cartoons.source must be synthetic, {', '.join(OFFICIAL)} or folder, got {source!r} "
            "(a folder or .tgz of your own goes in fetch_cartoons.folder)"
        )
    record["images"] = sum(1 for _ in out.rglob("*.png"))
    write_json_atomic(out / "fetch.json", record)
    log.info("fetch_cartoons: %d images from %s in %s", record["images"], source, out)
    return record
