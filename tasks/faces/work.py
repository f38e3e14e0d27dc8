"""Aligning a set of photos into WebDataset shards, in a process pool, resumable shard by shard.

Inputs are mapped to shards once and for all: split by a hash of the key (tasks.shards.dataset.split_of),
then, in key order, `shard_size` inputs per shard. Resumption is tasks.shards.dataset.ResumableShards:
a shard's record holds its rejections and uses, and its fingerprint is everything that determines
its bytes (the input file hashes, the params and the stage's code).

The DVC stage declares its out with `persist: true`, so DVC does not delete the folder before
running the stage again after a kill; the fingerprint makes reuse safe.

No prefect and no torch at module level: this module is imported by spawned worker processes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from tasks.faces.align import align_face
from tasks.faces.images import BadImage, load_rgb
from tasks.faces.landmarks import DlibLandmarks, NoFace, face_size, pick_face
from tasks.processes.pool import resolve_workers, spawn_executor
from tasks.reporting.progress import progress as progress_bar
from tasks.shards.dataset import ResumableShards, shard_name
from tasks.tracking.hashing import file_digest
from tasks.tracking.identity import code_identity, identity

# The raw folder's FFHQ-style metadata file, and which of its blocks holds each kind of image.
METADATA = "ffhq-dataset-v2.json"
BLOCKS = {"in_the_wild": "in_the_wild", "aligned": "image", "thumbnail": "thumbnail"}

# Shards are written in the main process (`finish`), with tarfile only: workers import neither webdataset
# nor torch.

LANDMARK_SOURCES = ("metadata", "dlib", "face_alignment")


@dataclass
class Item:
    key: str  # stable sample id (the shard key)
    split: str  # train | val (decided at fetch: FFHQ's category)
    path: str  # the photo
    landmarks: list | None = None  # (68, 2) from the metadata, or None
    aligned: bool = False  # already an FFHQ-aligned square: only resize
    md5: str | None = None  # of the photo file (for the fingerprint)
    info: dict = field(default_factory=dict)  # carried into the sample's json


@dataclass
class AlignConfig:
    landmarks: str = "metadata"
    output_size: int = 256
    transform_size: int = 4096
    enable_padding: bool = True
    min_face_size: float = 0.0
    dlib_upsample: int = 1

    def __post_init__(self):
        if self.landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {self.landmarks!r}")
        if not 1 <= self.output_size <= self.transform_size:
            raise ValueError(f"need 1 <= output_size <= transform_size, got {self.output_size}, {self.transform_size}")


# --- per image (runs in the worker processes) --------------------------------------------------

_DLIB = None


def _dlib(upsample: int):
    global _DLIB
    if _DLIB is None:
        _DLIB = DlibLandmarks(upsample)
    return _DLIB


def process_item(item: Item, cfg: AlignConfig) -> dict[str, Any]:
    """Load, find the face, align, encode. Returns {key, png, json} or {key, reason}."""
    try:
        img = load_rgb(item.path)
        if item.aligned:
            if img.width != img.height:
                raise NoFace(f"aligned image is not square: {img.width}x{img.height}")
            out = img if img.width == cfg.output_size else img.resize((cfg.output_size,) * 2, PIL.Image.LANCZOS)
            lm, size = None, float(img.width)
        else:
            if item.landmarks is not None:  # from the metadata, or computed by FAN in the main process
                lm = np.asarray(item.landmarks, dtype=np.float64)
                faces = [lm] if lm.size else []
            elif cfg.landmarks == "dlib":
                faces = _dlib(cfg.dlib_upsample)(np.asarray(img))
            else:
                raise NoFace(
                    "no landmarks in the metadata (use landmarks: dlib or face_alignment for photos without them)"
                )
            lm = pick_face(faces, cfg.min_face_size)
            size = face_size(lm)
            out = align_face(img, lm, cfg.output_size, cfg.transform_size, cfg.enable_padding)
    except (BadImage, NoFace, ValueError) as exc:
        return {"key": item.key, "reason": str(exc), "file": item.info.get("file")}
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=1)  # CPU-bound stage: fast zlib, ~15% larger
    meta = {
        **item.info,
        "key": item.key,
        "face_size": round(size, 2),
        "landmarks": None if lm is None else np.round(lm, 2).tolist(),
    }
    return {"key": item.key, "png": buf.getvalue(), "json": meta}


def _run(args) -> list[dict[str, Any]]:
    """A few items per task: one round trip to a worker costs about as much as aligning a small image."""
    items, cfg = args
    return [process_item(item, cfg) for item in items]


CHUNK = 8  # items per worker task: few round trips, still even work across workers near the end


# --- shard planning and resumption (main process) ---------------------------------------------


def plan_shards(items: list[Item], shard_size: int) -> list[tuple[str, int, list[Item]]]:
    """Fixed mapping: per split, consecutive runs of `shard_size` in key order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    by_split: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda i: i.key):
        by_split.setdefault(it.split, []).append(it)
    plan = []
    for split in sorted(by_split):
        group = by_split[split]
        for idx, start in enumerate(range(0, len(group), shard_size)):
            plan.append((split, idx, group[start : start + shard_size]))
    return plan


def shard_fingerprint(base: str, shard_items: list[Item]) -> str:
    return identity(base, [[it.key, it.md5 or _file_md5(it.path), it.landmarks, it.aligned] for it in shard_items])


def _file_md5(path: str) -> str:
    try:
        return file_digest(path, "md5")
    except OSError:
        return "missing"


def align_to_shards(
    items: list[Item],
    out_dir: str | Path,
    cfg: AlignConfig,
    *,
    shard_size: int,
    workers: int,
    params: dict,
    progress: bool = True,
    log: Callable[[str], None] = print,
    fan: Any = None,
    extra_rejections: list[dict] | None = None,
    extra_manifest: dict | None = None,
    list_used: bool = False,
) -> dict:
    """Align `items` into `out_dir` (shards + manifest.json), reusing finished shards. Returns the manifest."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = resolve_workers(workers)
    base_fp = json.dumps({"cfg": cfg.__dict__, "code": code_identity(), "shard_size": shard_size}, sort_keys=True)
    plan = plan_shards(items, shard_size)
    shards = ResumableShards(out_dir, {shard_name(s, i): shard_fingerprint(base_fp, its) for s, i, its in plan})
    if (old := shards.completed()) is not None:
        log(f"{out_dir}: already complete for these inputs and params; nothing to do")
        return old

    # Finished shards from an earlier (killed) run of the same inputs and params.
    done = shards.resume()
    pending = [(s, i, its) for s, i, its in plan if shard_name(s, i) not in done]
    n_pending = sum(len(its) for _, _, its in pending)
    log(
        f"{len(plan)} shards: {len(done)} already finished, {len(pending)} to do ({n_pending} images, "
        f"{workers} processes, landmarks {cfg.landmarks}); removed {shards.removed} stale files"
    )

    def finish(split: str, idx: int, results: list[dict]) -> None:
        ok = sorted((r for r in results if "png" in r), key=lambda r: r["key"])
        shards.write(
            split,
            idx,
            ({"__key__": r["key"], "png": r["png"], "json": r["json"]} for r in ok),
            {
                "split": split,
                "used": [{"key": r["key"], "file": r["json"].get("file")} for r in ok],
                "rejected": sorted((r for r in results if "reason" in r), key=lambda r: r["key"]),
            },
        )

    if pending:
        with (
            spawn_executor(min(workers, max(1, n_pending))) as pool,
            progress_bar(total=n_pending, desc="align", unit="img", disable=not progress) as bar,
        ):
            futures: dict = {}
            results: dict[tuple, list] = {}
            remaining: dict[tuple, int] = {}

            def drain(block: bool) -> None:
                finished, _ = wait(list(futures), timeout=None if block else 0, return_when=FIRST_COMPLETED)
                for f in finished:
                    sid = futures.pop(f)
                    chunk = f.result()
                    results[sid].extend(chunk)
                    remaining[sid] -= len(chunk)
                    bar.update(len(chunk))
                    if remaining[sid] == 0:
                        finish(*sid, results.pop(sid))

            for split, idx, its in pending:
                sid = (split, idx)
                results[sid], remaining[sid] = [], len(its)
                pre: list[dict] = []
                if cfg.landmarks == "face_alignment" and fan is not None:
                    its, pre = _fan_landmarks(fan, its, cfg)
                    results[sid].extend(pre)
                    remaining[sid] -= len(pre)
                    bar.update(len(pre))
                for start in range(0, len(its), CHUNK):
                    futures[pool.submit(_run, (its[start : start + CHUNK], cfg))] = sid
                if remaining[sid] == 0:
                    finish(split, idx, results.pop(sid))
                while len(futures) * CHUNK > 4 * workers * shard_size:  # bound memory on huge runs
                    drain(block=True)
                drain(block=False)
            while futures:
                drain(block=True)

    # Manifest: the source of truth for readers (tasks.shards.dataset.shard_paths).
    splits: dict[str, dict] = {}
    rejected = list(extra_rejections or [])
    used = []
    for split, idx, _ in plan:
        name = shard_name(split, idx)
        rec = done[name]
        sp = splits.setdefault(split, {"count": 0, "shards": []})
        sp["count"] += rec["count"]
        if rec["count"]:
            sp["shards"].append(name)
        rejected.extend(rec["rejected"])
        used.extend(rec["used"])
    all_shards = [n for sp in splits.values() for n in sp["shards"]]
    manifest = {
        "kind": "faces_aligned",
        "schema": {
            "png": f"uint8 RGB PNG, {cfg.output_size}x{cfg.output_size}, FFHQ-aligned",
            "json": "key, file, face_size (px, larger side of the landmarks' box in the source), "
            "landmarks (68x2, source pixels) and source fields",
        },
        "counts": {
            "inputs": len(items) + len(extra_rejections or []),
            "written": sum(sp["count"] for sp in splits.values()),
            "rejected": len(rejected),
            **{split: sp["count"] for split, sp in splits.items()},
        },
        "splits": splits,
        "all_shards": all_shards,
        "params": params,
        "fingerprint": shards.fingerprint,
        "rejected": rejected,
        **({"used": used} if list_used else {}),
        **(extra_manifest or {}),
    }
    return shards.finalise(manifest)


def _fan_landmarks(fan, its: list[Item], cfg: AlignConfig) -> tuple[list[Item], list[dict]]:
    """Run face-alignment on a shard's photos in the main process; returns items with landmarks
    filled in and the rejections (unreadable photo, no face, face too small)."""
    keep, rejected, images = [], [], []
    for it in its:
        if it.aligned or it.landmarks is not None:
            keep.append(it)
            continue
        try:
            images.append((it, np.asarray(load_rgb(it.path))))
        except BadImage as exc:
            rejected.append({"key": it.key, "reason": str(exc), "file": it.info.get("file")})
    faces = fan.batch([a for _, a in images]) if images else []
    for (it, _), fs in zip(images, faces):
        try:
            lm = pick_face(fs, cfg.min_face_size)
        except NoFace as exc:
            rejected.append({"key": it.key, "reason": str(exc), "file": it.info.get("file")})
            continue
        keep.append(Item(it.key, it.split, it.path, lm.tolist(), False, it.md5, it.info))
    return keep, rejected


# --- reading a raw folder back ---------------------------------------------------------------


def items_from_raw(raw_dir: str | Path, landmarks: str) -> tuple[list[Item], dict]:
    """Items to align from a raw folder; metadata landmarks are attached only when asked for."""
    raw_dir = Path(raw_dir)
    meta_path = raw_dir / METADATA
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing: run fetch_faces first")
    with open(meta_path) as f:
        entries = json.load(f)
    try:
        raw_manifest = json.loads((raw_dir / "manifest.json").read_text())
    except FileNotFoundError:
        raw_manifest = {"images": "in_the_wild"}
    images = raw_manifest.get("images", "in_the_wild")
    block = BLOCKS[images]
    items = []
    for key, e in entries.items():
        spec = e[block]
        lm = spec.get("face_landmarks") if (block == "in_the_wild" and landmarks == "metadata") else None
        items.append(
            Item(
                key=key,
                split="val" if e.get("category") == "validation" else "train",
                path=str(raw_dir / spec["file_path"]),
                landmarks=lm,
                aligned=block != "in_the_wild",
                md5=spec.get("file_md5"),
                info={
                    "file": spec["file_path"],
                    **{k: v for k, v in (e.get("metadata") or {}).items() if k in ("identity", "source", "original")},
                },
            )
        )
    return items, raw_manifest
