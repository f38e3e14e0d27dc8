"""Getting face photos into a raw folder described by FFHQ-format metadata.

Every source ends the same way: `<raw>/ffhq-dataset-v2.json` (keyed by sample id; `category`
training/validation; `image`, `thumbnail` and `in_the_wild` blocks with `file_path`, `file_size`,
`file_md5`, `pixel_size`, and for in-the-wild photos `face_rect`, `face_landmarks`, `face_quad`
when known) next to the files it names, plus `manifest.json` (counts, params, rejections).

- ffhq: NVlabs' metadata and files, every file verified by size and md5 (tasks.download.fetch).
- a folder: photos of any size and format Pillow reads, EXIF orientation applied, saved as PNG;
  duplicates (identical pixels, or a difference hash within `near_duplicate_bits`) are rejected.
- synthetic: drawn by tasks.synthetic.faces, landmarks exact.

No prefect and no torch at module level (the synthetic drawing runs in spawned processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image

from tasks.download.fetch import DownloadError, DriveQuotaError, download_file
from tasks.faces.align import ffhq_quad
from tasks.faces.config import FetchFacesConfig
from tasks.faces.images import BadImage, load_rgb
from tasks.faces.work import BLOCKS, METADATA
from tasks.processes.pool import imap, process_pool, resolve_workers
from tasks.reporting.progress import progress as progress_bar
from tasks.shards.dataset import split_of, write_json_atomic, write_manifest
from tasks.synthetic import faces as synthetic

# NVlabs/ffhq-dataset download_ffhq.py: the metadata file's official location and checksum.
FFHQ_METADATA = dict(
    file_url="https://drive.google.com/uc?id=16N0RV4fHI6joBuKbQAoG34V_cQk7vxSA",
    file_size=267793842,
    file_md5="425ae20f06a4da1d4dc0f46d40ba5fd6",
)
# What to do when Google Drive (the official file_urls) refuses files for its download quota.
DRIVE_QUOTA_HINT = (
    "for FFHQ, set fetch_faces.ffhq.base_url to a mirror laid out like the original, "
    "or use photos you have: fetch_faces.source: folder, photos in fetch_faces.folder"
)
FOLDER_README = "README.md"  # what an input folder is for: not a photo, skipped
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def _category(key: str, val_fraction: float) -> str:
    return "validation" if split_of(key, val_fraction) == "val" else "training"


def _subdir_path(prefix: str, index: int) -> str:
    """FFHQ's layout: in-the-wild-images/01000/01234.png."""
    return f"{prefix}/{index - index % 1000:05d}/{index:05d}.png"


def _finish(out_dir: Path, entries: dict, manifest: dict) -> dict:
    """Write the metadata, delete files no entry names (a persisted folder's leftovers), manifest."""
    write_json_atomic(out_dir / METADATA, entries)
    keep = {METADATA, "manifest.json"}
    for e in entries.values():
        for block in ("image", "thumbnail", "in_the_wild"):
            if e.get(block) and e[block].get("file_path"):
                keep.add(e[block]["file_path"])
    for p in sorted(out_dir.rglob("*"), reverse=True):
        rel = p.relative_to(out_dir).as_posix()
        if p.is_file() and rel not in keep:
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    write_manifest(out_dir, manifest)
    return manifest


# --- synthetic -----------------------------------------------------------------------------


def _draw_one(args) -> tuple[str, dict]:
    out_dir, key, index, ident_kind, seed, ident_index, size, scale_range, max_rotation = args
    ident = synthetic.subject_identity(seed) if ident_kind == "subject" else synthetic.base_identity(seed, ident_index)
    photo = synthetic.draw_photo(
        ident, ("photo", index), size=size, scale_range=tuple(scale_range), max_rotation=max_rotation
    )
    rel = _subdir_path("in-the-wild-images", index)
    wild = synthetic.write_photo(photo, Path(out_dir) / rel)
    wild = {
        "file_url": None,
        "file_path": rel,
        **wild,
        "face_quad": np.round(ffhq_quad(photo.landmarks).quad, 3).tolist(),
    }
    return key, {"identity": ident.name, "in_the_wild": wild}


def fetch_synthetic(
    out_dir: str | Path,
    *,
    num_images: int,
    num_identities: int,
    seed: int,
    image_size: int = 320,
    scale_range=(22.0, 48.0),
    max_rotation: float = 30.0,
    val_fraction: float = 0.1,
    subject: bool = False,
    workers: int = 0,
    params: dict | None = None,
    progress: bool = True,
) -> dict:
    """Draw `num_images` photos of `num_identities` base identities (or of the held-out subject)."""

    if num_images < 1 or (not subject and num_identities < 1):
        raise ValueError(f"num_images and num_identities must be >= 1, got {num_images}, {num_identities}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            str(out_dir),
            f"{i:05d}",
            i,
            "subject" if subject else "base",
            seed,
            i % max(1, num_identities),
            image_size,
            list(scale_range),
            max_rotation,
        )
        for i in range(num_images)
    ]
    with process_pool(min(resolve_workers(workers), num_images)) as pool:
        drawn = dict(
            progress_bar(imap(pool, _draw_one, jobs, 8), total=len(jobs), desc="draw", unit="img", disable=not progress)
        )
    entries = {}
    for key in sorted(drawn):
        d = drawn[key]
        entries[key] = {
            "category": "training" if subject else _category(key, val_fraction),
            "metadata": {"source": "synthetic", "identity": d["identity"], "license": "generated (CC0)"},
            # A drawn photo has no FFHQ-aligned or thumbnail version: align_faces makes it.
            "image": None,
            "thumbnail": None,
            "in_the_wild": d["in_the_wild"],
        }
    identities = sorted({e["metadata"]["identity"] for e in entries.values()})
    manifest = {
        "kind": "faces_raw",
        "source": "synthetic",
        "images": "in_the_wild",
        "counts": {"images": len(entries), "identities": len(identities), "rejected": 0},
        "identities": identities,
        "params": params or {},
        "rejected": [],
    }
    return _finish(out_dir, entries, manifest)


# --- a folder of photos --------------------------------------------------------------------


def _safe_key(stem: str, taken: set[str]) -> str:
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "photo"
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    taken.add(key)
    return key


def difference_hash(img: PIL.Image.Image) -> int:
    """64-bit dHash: the photo in 9x8 grey (box-averaged), one bit per pixel brighter than its right
    neighbour. A resized or re-encoded copy lands a few bits away; two different photos, about 32."""
    g = np.asarray(img.convert("L").resize((9, 8), PIL.Image.Resampling.BOX), dtype=np.int16)
    return int(np.packbits(g[:, 1:] > g[:, :-1]).view(">u8")[0])


class Duplicates:
    """The photos seen so far, by decoded pixels and by difference hash: `check` names the first one a
    photo duplicates (a copy in another format or size, or re-encoded), or returns None."""

    def __init__(self, max_bits: int, capacity: int):
        self.max_bits, self.pixels, self.keys = max_bits, {}, []
        self.hashes = np.zeros(capacity, np.uint64)

    def check(self, key: str, img: PIL.Image.Image) -> str | None:
        digest = hashlib.sha256(repr(img.size).encode() + img.tobytes()).hexdigest()
        if digest in self.pixels:
            return f"duplicate of {self.pixels[digest]} (identical pixels)"
        h, n = difference_hash(img), len(self.keys)
        bits = np.bitwise_count(self.hashes[:n] ^ np.uint64(h))
        if n and bits.min() <= self.max_bits:
            i = int(bits.argmin())
            return f"duplicate of {self.keys[i]} (near: difference hashes {int(bits[i])} of 64 bits apart)"
        self.pixels[digest], self.hashes[n] = key, h
        self.keys.append(key)
        return None


def fetch_folder(
    src: str | Path,
    out_dir: str | Path,
    *,
    near_duplicate_bits: int,
    val_fraction: float = 0.1,
    all_training: bool = False,
    params: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Copy every readable photo of `src` (recursively) as an upright RGB PNG; reject the rest,
    duplicates of an earlier photo (in name order) included."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"photo folder {src} does not exist (set the stage's `folder` param to yours)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != FOLDER_README)
    entries, rejected, taken = {}, [], set()
    seen = Duplicates(near_duplicate_bits, len(files))
    for p in files:
        rel_src = p.relative_to(src).as_posix()
        key = _safe_key(p.relative_to(src).with_suffix("").as_posix().replace("/", "_"), taken)
        try:
            img = load_rgb(p)
            reason = seen.check(key, img)
        except BadImage as exc:
            reason = str(exc)
        if reason:
            rejected.append({"key": key, "file": rel_src, "reason": reason})
            continue
        rel = f"in-the-wild-images/{key}.png"
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        img.save(tmp, format="PNG")
        os.replace(tmp, dest)
        data = dest.read_bytes()
        entries[key] = {
            "category": "training" if all_training else _category(key, val_fraction),
            "metadata": {"source": "folder", "original": rel_src},
            "image": None,
            "thumbnail": None,
            "in_the_wild": {
                "file_url": None,
                "file_path": rel,
                "file_size": len(data),
                "file_md5": hashlib.md5(data).hexdigest(),
                "pixel_size": list(img.size),
            },
        }
    for r in rejected:
        log(f"rejected {r['file']}: {r['reason']}")
    if not entries:
        raise ValueError(f"no usable photo in {src} ({len(rejected)} files rejected): put your photos there")
    dups = sum(r["reason"].startswith("duplicate of ") for r in rejected)
    manifest = {
        "kind": "faces_raw",
        "source": "folder",
        "images": "in_the_wild",
        "folder": str(src),
        "counts": {"files": len(files), "images": len(entries), "rejected": len(rejected), "duplicates": dups},
        "params": params or {},
        "rejected": rejected,
    }
    return _finish(out_dir, entries, manifest)


# --- FFHQ ----------------------------------------------------------------------------------


def fetch_ffhq(
    out_dir: str | Path,
    *,
    images: str = "in_the_wild",
    num_images: int | None = None,
    base_url: str | None = None,
    metadata_url: str | None = None,
    metadata_md5: str | None = FFHQ_METADATA["file_md5"],
    metadata_size: int | None = FFHQ_METADATA["file_size"],
    num_threads: int = 8,
    retries: int = 3,
    download_dir: str | Path | None = "data/downloads/ffhq",
    params: dict | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Download FFHQ's metadata, then the first `num_images` photos (by index), verified.

    `base_url` points at a mirror laid out like the official one (`<base>/<file_path>`,
    metadata at `<base>/ffhq-dataset-v2.json`); without it the official `file_url`s are used.
    Files already present and verified are kept (a rerun resumes); the bytes of a file that fails
    its size or md5 check stay in `<file>.partial`, never used, and the stage fails, naming it,
    after the others are done. Drive's quota page is an error that says what to do. The 255 MB
    metadata file is kept in `download_dir` (outside the DVC out, git-ignored) so that a rerun
    with other params does not fetch it again; None keeps it nowhere.
    """

    if images not in BLOCKS:
        raise ValueError(f"images must be one of {sorted(BLOCKS)}, got {images!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/") if base_url else None
    meta_url = metadata_url or (f"{base}/{METADATA}" if base else FFHQ_METADATA["file_url"])
    if not metadata_md5:
        log(f"metadata_md5 not set: {meta_url} is not verified")
    cache = Path(download_dir) if download_dir else out_dir / ".ffhq"
    try:
        meta_path = download_file(
            meta_url, cache / METADATA, size=metadata_size, md5=metadata_md5, retries=retries, progress=progress
        )
    except DriveQuotaError as exc:
        raise DriveQuotaError(f"{exc}; {DRIVE_QUOTA_HINT}") from None
    with open(meta_path) as f:
        full = json.load(f)
    keys = sorted(full, key=int)[: num_images if num_images else None]
    block = BLOCKS[images]
    specs = []
    for k in keys:
        spec = full[k].get(block)
        if not spec or not spec.get("file_path"):
            raise ValueError(f"{METADATA} entry {k} has no '{block}' block with a file_path")
        url = f"{base}/{spec['file_path']}" if base else spec["file_url"]
        specs.append((k, url, spec))

    failures: list[tuple[str, str, DownloadError]] = []

    def get(job):
        k, url, spec = job
        try:
            download_file(
                url,
                out_dir / spec["file_path"],
                size=spec.get("file_size"),
                md5=spec.get("file_md5"),
                retries=retries,
                progress=False,
            )
        except DownloadError as exc:
            failures.append((k, spec["file_path"], exc))

    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        list(progress_bar(pool.map(get, specs), total=len(specs), desc="ffhq", unit="file", disable=not progress))
    if failures:
        quota = any(isinstance(exc, DriveQuotaError) for *_, exc in failures)
        raise DownloadError(
            f"{len(failures)} of {len(specs)} FFHQ files failed verification or download (bytes "
            f"that failed are kept as .partial, never used; good files are kept for the rerun)"
            + (f"; {DRIVE_QUOTA_HINT}" if quota else "")
            + ":\n  "
            + "\n  ".join(f"{k} ({path}): {exc}" for k, path, exc in failures[:20])
        )
    entries = {f"{int(k):05d}": full[k] for k in keys}
    manifest = {
        "kind": "faces_raw",
        "source": "ffhq",
        "images": images,
        "counts": {"images": len(entries), "rejected": 0},
        "metadata": {"url": meta_url, "md5": metadata_md5},
        "params": params or {},
        "rejected": [],
    }
    if not download_dir:
        shutil.rmtree(cache)  # the 255 MB metadata: its subset is kept instead
    return _finish(out_dir, entries, manifest)


# --- the stage ---------------------------------------------------------------------------


def fetch_faces(out_dir: str, config: FetchFacesConfig, log) -> str:
    """Stage fetch_faces: fill `out_dir` with photos + ffhq-dataset-v2.json + manifest.json from `source`
    (`log`: a logger)."""
    source, syn, ffhq, params = config.source, config.synthetic, config.ffhq, config.to_dict()
    if source == "synthetic":
        m = fetch_synthetic(
            out_dir,
            num_images=syn.num_images,
            num_identities=syn.num_identities,
            seed=syn.seed,
            image_size=syn.image_size,
            scale_range=syn.face_scale,
            max_rotation=float(syn.max_rotation),
            val_fraction=config.val_fraction,
            workers=config.workers,
            params=params,
        )
    elif source == "ffhq":
        m = fetch_ffhq(
            out_dir,
            images=ffhq.images,
            num_images=ffhq.num_images,
            base_url=ffhq.base_url,
            metadata_url=ffhq.metadata_url,
            metadata_md5=ffhq.metadata_md5,
            metadata_size=ffhq.metadata_size,
            num_threads=ffhq.num_threads,
            retries=ffhq.retries,
            params=params,
            log=log.info,
        )
    else:
        m = fetch_folder(
            config.folder,
            out_dir,
            near_duplicate_bits=config.near_duplicate_bits,
            val_fraction=config.val_fraction,
            params=params,
            log=log.warning,
        )
    log.info(f"fetch_faces ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)
