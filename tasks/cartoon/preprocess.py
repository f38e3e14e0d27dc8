"""Stage preprocess_cartoons: Cartoon Set folder -> 64x64 RGB WebDataset shards + manifest."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from tasks.cartoon.images import prepare_image, read_attributes
from tasks.cartoon.schema import AttributeFileError, AttributeSchema
from tasks.processes.pool import imap, process_pool, resolve_workers
from tasks.reporting.log import get_logger
from tasks.reporting.progress import progress
from tasks.shards.dataset import AtomicShardWriter, split_of, write_manifest

FORMAT = "facediff.cartoon-shards/1"


class TooManyRejections(RuntimeError):
    pass


def find_pairs(raw_dir: Path) -> tuple[dict[str, tuple[Path, Path]], list[dict]]:
    """{key: (png, csv)} for every csX in `raw_dir` (searched recursively), plus rejections."""
    pngs = {p.stem: p for p in raw_dir.rglob("*.png")}
    csvs = {p.stem: p for p in raw_dir.rglob("*.csv")}
    rejected = [{"key": k, "reason": "attribute csv without an image"} for k in sorted(set(csvs) - set(pngs))]
    pairs = {k: (pngs[k], csvs.get(k, pngs[k].with_suffix(".csv"))) for k in sorted(pngs)}
    return pairs, rejected


def check_rejections(rejected: list[dict], total: int, max_fraction: float, stage: str) -> None:
    if total == 0:
        raise TooManyRejections(f"{stage}: no inputs found")
    fraction = len(rejected) / total
    if fraction > max_fraction:
        reasons = Counter(r["reason"].split(":")[0] for r in rejected).most_common(5)
        raise TooManyRejections(
            f"{stage}: {len(rejected)} of {total} inputs rejected ({fraction:.1%} > max_reject_fraction "
            f"{max_fraction:.1%}); most common reasons: {reasons}; e.g. {rejected[0]['key']}: {rejected[0]['reason']}"
        )


def preprocess_cartoons(
    raw_dir: str,
    out_dir: str,
    *,
    background: list[int],
    crop: int,
    resolution: int,
    resample: str,
    image_size: int | None,
    val_fraction: float,
    shard_size: int,
    max_reject_fraction: float,
    workers: int,
) -> str:
    """Validate every (csX.png, csX.csv) pair and write train/val shards; returns the manifest path."""
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise FileNotFoundError(f"{raw} is not a folder: run fetch_cartoons first")
    # Written beside `out` and swapped in only when complete: a failing run leaves the previous
    # complete output (or none), never a half state.
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        path = _preprocess_into(
            raw,
            work,
            background=background,
            crop=crop,
            resolution=resolution,
            resample=resample,
            image_size=image_size,
            val_fraction=val_fraction,
            shard_size=shard_size,
            max_reject_fraction=max_reject_fraction,
            workers=workers,
        )
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, TooManyRejections):
            kept = (
                f"{out} keeps its previous complete output"
                if (out / "manifest.json").is_file()
                else f"nothing written to {out}"
            )
            raise TooManyRejections(f"{exc} ({kept})") from None
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return str(out / Path(path).name)


def _preprocess_into(
    raw: Path,
    out: Path,
    *,
    background: list[int],
    crop: int,
    resolution: int,
    resample: str,
    image_size: int | None,
    val_fraction: float,
    shard_size: int,
    max_reject_fraction: float,
    workers: int,
) -> str:
    log = get_logger()
    pairs, rejected = find_pairs(raw)
    keys = list(pairs)
    total = len(keys) + len(rejected)
    log.info("preprocess_cartoons: %d images in %s, %d workers", len(keys), raw, resolve_workers(workers))

    with process_pool(workers) as pool:
        # Pass 1: attribute files; the layout is what most files agree on. Parsed here, not in the
        # pool: a file costs less than sending it to a worker, and this runs while the spawned
        # workers are still importing.
        parsed = [read_attributes(str(pairs[k][1])) for k in progress(keys, desc="attributes", unit="csv")]
        good_rows = [rows for ok, rows in parsed if ok]
        if not good_rows:
            check_rejections(
                [{"key": k, "reason": r} for k, (_, r) in zip(keys, parsed)], total, 0.0, "preprocess_cartoons"
            )
        schema = AttributeSchema.consensus(good_rows)
        indices: dict[str, list[int]] = {}
        for key, (ok, rows) in zip(keys, parsed):
            try:
                if not ok:
                    raise AttributeFileError(rows)
                indices[key] = schema.indices(rows)
            except AttributeFileError as exc:
                rejected.append({"key": key, "reason": str(exc)})
        # No decision yet: the images' own rejects count too (all reasons, then one verdict).

        # Pass 2: images, in key order, so the shards are the same bytes for the same inputs.
        keys = [k for k in keys if k in indices]
        jobs = [(str(pairs[k][0]), list(background), crop, resolution, resample, image_size) for k in keys]
        writers = {s: AtomicShardWriter(out, s, shard_size) for s in ("train", "val")}
        try:
            results = imap(pool, prepare_image, jobs, 16)
            for key, (ok, payload) in progress(zip(keys, results), total=len(keys), desc="images", unit="img"):
                if not ok:
                    rejected.append({"key": key, "reason": payload})
                    continue
                split = split_of(key, val_fraction)
                writers[split].write({"__key__": key, "png": payload, "attrs.json": json.dumps(indices[key]).encode()})
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
    splits = {name: writer.close() for name, writer in writers.items()}
    check_rejections(rejected, total, max_reject_fraction, "preprocess_cartoons")
    reasons = Counter(r["reason"].split(":")[0] for r in rejected)
    for reason, n in reasons.most_common():
        log.warning("rejected %d input(s): %s", n, reason)
    manifest = {
        "format": FORMAT,
        "counts": {
            "inputs": total,
            "train": splits["train"]["count"],
            "val": splits["val"]["count"],
            "rejected": len(rejected),
        },
        "splits": splits,
        "sample": {
            "png": f"uint8 RGB PNG, {resolution}x{resolution}",
            "attrs.json": "variant index per attribute, in schema order",
        },
        "schema": schema.to_json(),
        "params": {
            "background": list(background),
            "crop": crop,
            "resolution": resolution,
            "resample": resample,
            "image_size": image_size,
            "val_fraction": val_fraction,
            "shard_size": shard_size,
            "max_reject_fraction": max_reject_fraction,
        },
        "source": str(raw),
        "rejected": sorted(rejected, key=lambda r: r["key"]),
    }
    path = write_manifest(out, manifest)
    log.info(
        "wrote %d train / %d val samples, %d rejected -> %s",
        splits["train"]["count"],
        splits["val"]["count"],
        len(rejected),
        out,
    )
    return str(path)
