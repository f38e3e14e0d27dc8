"""Stage align_faces (and prepare_subject's alignment step): a raw folder of photos -> aligned face
shards, with NVlabs' FFHQ alignment from `metadata`, `dlib` or `face_alignment` landmarks.

The per-photo work runs in spawned processes (tasks/faces/work.py); this module validates, wires
the pieces and logs.
"""

from __future__ import annotations

from typing import Any

from tasks.faces.config import AlignFacesConfig
from tasks.faces.landmarks import FanLandmarks
from tasks.faces.work import LANDMARK_SOURCES, AlignConfig, align_to_shards, items_from_raw


def _align_config(config: AlignFacesConfig) -> AlignConfig:
    """The per-photo settings the worker processes get (the rest of the stage config stays here)."""
    return AlignConfig(
        landmarks=config.landmarks,
        output_size=config.output_size,
        transform_size=config.transform_size,
        enable_padding=config.enable_padding,
        min_face_size=float(config.min_face_size),
        dlib_upsample=config.dlib_upsample,
    )


def _fan(config: AlignFacesConfig):
    if config.landmarks != "face_alignment":
        return None
    return FanLandmarks(device=config.device, batch_size=config.batch_size)


def align_faces(
    raw_dir: str,
    out_dir: str,
    config: AlignFacesConfig,
    *,
    record: dict[str, Any],
    log,
    extra_manifest: dict | None = None,
    list_used: bool = False,
) -> dict:
    """Align every photo of a raw folder into shards; returns the manifest. `record`: the params the
    manifest records as having made it (prepare_subject records its own section)."""
    landmarks = config.landmarks
    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {landmarks!r}")
    cfg = _align_config(config)
    items, raw_manifest = items_from_raw(raw_dir, landmarks)
    if (
        landmarks == "metadata"
        and raw_manifest.get("images", "in_the_wild") == "in_the_wild"
        and not any(it.landmarks for it in items)
    ):
        raise ValueError(
            f"{raw_dir} has no landmarks in its metadata (a folder of photos?): use landmarks: dlib or face_alignment"
        )
    manifest = align_to_shards(
        items,
        out_dir,
        cfg,
        shard_size=config.shard_size,
        workers=config.workers,
        params=record,
        log=log.info,
        fan=_fan(config),
        extra_rejections=raw_manifest.get("rejected"),
        extra_manifest=extra_manifest,
        list_used=list_used,
    )
    if manifest["counts"]["written"] == 0:
        raise ValueError(
            f"no face survived alignment ({manifest['counts']['rejected']} rejected; "
            f"first reasons: {[r['reason'] for r in manifest['rejected'][:3]]})"
        )
    for r in manifest["rejected"][:20]:
        log.warning(f"rejected {r.get('file') or r['key']}: {r['reason']}")
    log.info(f"align_faces: {manifest['counts']} -> {out_dir}")
    return manifest
