"""Prefect tasks of the face stages (fetch_faces, align_faces, prepare_subject), over paths.

Naming rule: the task that runs stage X is `X_task`, named "X" in Prefect; prepare_subject is three
steps (fetch_subject, align_faces, subject_report), each a task named after its step.

The per-image work lives in prefect-free modules (fetch, work, align, landmarks) that the
process pools import; this module only validates parameters, wires the pieces and logs.
"""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.faces import fetch as F
from tasks.faces.config import AlignFacesConfig, FetchFacesConfig, PrepareSubjectConfig
from tasks.faces.work import LANDMARK_SOURCES, AlignConfig, align_to_shards
from tasks.common.log import get_logger


def _align_config(config: AlignFacesConfig) -> AlignConfig:
    """The per-photo settings the worker processes get (the rest of the stage config stays here)."""
    return AlignConfig(landmarks=config.landmarks, output_size=config.output_size,
                       transform_size=config.transform_size, enable_padding=config.enable_padding,
                       min_face_size=float(config.min_face_size), dlib_upsample=config.dlib_upsample)


def _fan(config: AlignFacesConfig):
    if config.landmarks != "face_alignment":
        return None
    from tasks.faces.landmarks import FanLandmarks

    return FanLandmarks(device=config.device, batch_size=config.batch_size)


@task(name="fetch_faces", cache_policy=NO_CACHE)
def fetch_faces_task(out_dir: str, config: FetchFacesConfig) -> str:
    """Fill `out_dir` with photos + ffhq-dataset-v2.json + manifest.json from `source`."""
    log = get_logger()
    source, syn, ffhq, params = config.source, config.synthetic, config.ffhq, config.to_dict()
    if source == "synthetic":
        m = F.fetch_synthetic(out_dir, num_images=syn.num_images, num_identities=syn.num_identities, seed=syn.seed,
                              image_size=syn.image_size, scale_range=syn.face_scale,
                              max_rotation=float(syn.max_rotation), val_fraction=config.val_fraction,
                              workers=config.workers, params=params)
    elif source == "ffhq":
        m = F.fetch_ffhq(out_dir, images=ffhq.images, num_images=ffhq.num_images, base_url=ffhq.base_url,
                         metadata_url=ffhq.metadata_url, metadata_md5=ffhq.metadata_md5,
                         metadata_size=ffhq.metadata_size, num_threads=ffhq.num_threads, retries=ffhq.retries,
                         params=params, log=log.info)
    else:
        m = F.fetch_folder(source, out_dir, val_fraction=config.val_fraction, params=params, log=log.warning)
    log.info(f"fetch_faces ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)


@task(name="align_faces", cache_policy=NO_CACHE)  # resumption is by shard fingerprints on disk
def align_faces_task(raw_dir: str, out_dir: str, config: AlignFacesConfig, *, record: dict[str, Any],
                     extra_manifest: dict | None = None, list_used: bool = False) -> dict:
    """Align every photo of a raw folder into shards; returns the manifest. `record`: the params the
    manifest records as having made it (prepare_subject records its own section)."""
    log = get_logger()
    landmarks = config.landmarks
    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {landmarks!r}")
    cfg = _align_config(config)
    items, raw_manifest = F.items_from_raw(raw_dir, landmarks)
    if landmarks == "metadata" and raw_manifest.get("images", "in_the_wild") == "in_the_wild" \
            and not any(it.landmarks for it in items):
        raise ValueError(f"{raw_dir} has no landmarks in its metadata (a folder of photos?): "
                         f"use landmarks: dlib or face_alignment")
    manifest = align_to_shards(items, out_dir, cfg, shard_size=config.shard_size, workers=config.workers,
                               params=record, log=log.info, fan=_fan(config),
                               extra_rejections=raw_manifest.get("rejected"), extra_manifest=extra_manifest,
                               list_used=list_used)
    if manifest["counts"]["written"] == 0:
        raise ValueError(f"no face survived alignment ({manifest['counts']['rejected']} rejected; "
                         f"first reasons: {[r['reason'] for r in manifest['rejected'][:3]]})")
    for r in manifest["rejected"][:20]:
        log.warning(f"rejected {r.get('file') or r['key']}: {r['reason']}")
    log.info(f"align_faces: {manifest['counts']} -> {out_dir}")
    return manifest


@task(name="fetch_subject", cache_policy=NO_CACHE)
def fetch_subject_task(out_dir: str, config: PrepareSubjectConfig, record: dict[str, Any]) -> str:
    """The subject's photos: the held-out synthetic identity, or a folder of one person's photos."""
    log = get_logger()
    syn = config.synthetic
    if config.source == "synthetic":
        m = F.fetch_synthetic(out_dir, num_images=syn.num_photos, num_identities=1, seed=syn.seed,
                              image_size=syn.image_size, scale_range=syn.face_scale,
                              max_rotation=float(syn.max_rotation), subject=True, workers=config.workers,
                              params=record, progress=False)
    else:
        m = F.fetch_folder(config.source, out_dir, all_training=True, params=record, log=log.warning)
    log.info(f"prepare_subject photos ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)


@task(name="subject_report", cache_policy=NO_CACHE)
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
