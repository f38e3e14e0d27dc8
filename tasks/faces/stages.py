"""Prefect tasks of the face stages (fetch_faces, align_faces, prepare_subject), over paths.

The per-image work lives in prefect-free modules (fetch, work, align, landmarks) that the
process pools import; this module only validates parameters, wires the pieces and logs.
"""
from __future__ import annotations

from typing import Any

from prefect import task

from tasks.faces import fetch as F
from tasks.faces.work import LANDMARK_SOURCES, AlignConfig, align_to_shards
from tasks.common.log import get_logger


def _align_config(landmarks: str, output_size: int, transform_size: int, enable_padding: bool,
                  min_face_size: float, dlib_upsample: int) -> AlignConfig:
    return AlignConfig(landmarks=landmarks, output_size=int(output_size), transform_size=int(transform_size),
                       enable_padding=bool(enable_padding), min_face_size=float(min_face_size),
                       dlib_upsample=int(dlib_upsample))


def _fan(cfg: AlignConfig, device: str, batch_size: int):
    if cfg.landmarks != "face_alignment":
        return None
    from tasks.faces.landmarks import FanLandmarks

    return FanLandmarks(device=device, batch_size=batch_size)


@task(name="fetch-faces")
def fetch_faces_task(out_dir: str, source: str, val_fraction: float, workers: int,
                     synthetic: dict[str, Any], ffhq: dict[str, Any], params: dict[str, Any]) -> str:
    """Fill `out_dir` with photos + ffhq-dataset-v2.json + manifest.json from `source`."""
    log = get_logger()
    if source == "synthetic":
        m = F.fetch_synthetic(out_dir, num_images=int(synthetic["num_images"]),
                              num_identities=int(synthetic["num_identities"]), seed=int(synthetic["seed"]),
                              image_size=int(synthetic["image_size"]), scale_range=synthetic["face_scale"],
                              max_rotation=float(synthetic["max_rotation"]), val_fraction=val_fraction,
                              workers=workers, params=params)
    elif source == "ffhq":
        m = F.fetch_ffhq(out_dir, images=ffhq["images"], num_images=ffhq.get("num_images"),
                         base_url=ffhq.get("base_url"), metadata_url=ffhq.get("metadata_url"),
                         metadata_md5=ffhq.get("metadata_md5"), metadata_size=ffhq.get("metadata_size"),
                         num_threads=int(ffhq.get("num_threads", 8)), retries=int(ffhq.get("retries", 3)),
                         params=params, log=log.info)
    else:
        m = F.fetch_folder(source, out_dir, val_fraction=val_fraction, params=params, log=log.warning)
    log.info(f"fetch_faces ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)


@task(name="align-faces")
def align_faces_task(raw_dir: str, out_dir: str, *, landmarks: str, output_size: int, transform_size: int,
                     enable_padding: bool, min_face_size: float, shard_size: int, workers: int, device: str,
                     batch_size: int, dlib_upsample: int, params: dict[str, Any],
                     extra_manifest: dict | None = None, list_used: bool = False) -> dict:
    """Align every photo of a raw folder into shards; returns the manifest."""
    log = get_logger()
    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {landmarks!r}")
    cfg = _align_config(landmarks, output_size, transform_size, enable_padding, min_face_size, dlib_upsample)
    items, raw_manifest = F.items_from_raw(raw_dir, landmarks)
    if landmarks == "metadata" and raw_manifest.get("images", "in_the_wild") == "in_the_wild" \
            and not any(it.landmarks for it in items):
        raise ValueError(f"{raw_dir} has no landmarks in its metadata (a folder of photos?): "
                         f"use landmarks: dlib or face_alignment")
    fan = _fan(cfg, device, batch_size)
    manifest = align_to_shards(items, out_dir, cfg, shard_size=int(shard_size), workers=int(workers),
                               params=params, log=log.info, fan=fan,
                               extra_rejections=raw_manifest.get("rejected"), extra_manifest=extra_manifest,
                               list_used=list_used)
    if manifest["counts"]["written"] == 0:
        raise ValueError(f"no face survived alignment ({manifest['counts']['rejected']} rejected; "
                         f"first reasons: {[r['reason'] for r in manifest['rejected'][:3]]})")
    for r in manifest["rejected"][:20]:
        log.warning(f"rejected {r.get('file') or r['key']}: {r['reason']}")
    log.info(f"align_faces: {manifest['counts']} -> {out_dir}")
    return manifest


@task(name="fetch-subject")
def fetch_subject_task(out_dir: str, source: str, synthetic: dict[str, Any], params: dict[str, Any],
                       workers: int = 0) -> str:
    """The subject's photos: the held-out synthetic identity, or a folder of one person's photos."""
    log = get_logger()
    if source == "synthetic":
        m = F.fetch_synthetic(out_dir, num_images=int(synthetic["num_photos"]), num_identities=1,
                              seed=int(synthetic["seed"]), image_size=int(synthetic["image_size"]),
                              scale_range=synthetic["face_scale"], max_rotation=float(synthetic["max_rotation"]),
                              subject=True, workers=workers, params=params, progress=False)
    else:
        m = F.fetch_folder(source, out_dir, all_training=True, params=params, log=log.warning)
    log.info(f"prepare_subject photos ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)


@task(name="subject-report")
def subject_report_task(out_dir: str, min_photos: int) -> dict:
    """Add the used/rejected report to the subject's manifest; warn when too few photos survive."""
    from tasks.common.shards import read_manifest, write_manifest

    manifest = read_manifest(out_dir)
    report = subject_report(manifest, min_photos)
    if report["warning"]:
        get_logger().warning(report["warning"])
    write_manifest(out_dir, {**manifest, "report": report})
    return report


def subject_report(manifest: dict, min_photos: int) -> dict:
    """Which photos were used and which were rejected, and why (the part a user reads)."""
    report = {
        "used": manifest.get("used", []),
        "rejected": [{"photo": r.get("file") or r["key"], "reason": r["reason"]} for r in manifest["rejected"]],
        "warning": None,
    }
    if manifest["counts"]["written"] < min_photos:
        report["warning"] = (f"only {manifest['counts']['written']} subject photos survived "
                             f"(fewer than {min_photos}): DreamBooth will overfit or fail to learn the identity")
    return report
