"""Stage prepare_subject: the DreamBooth subject's photos, fetched (the held-out synthetic identity
or a folder of one person's photos), aligned like align_faces (tasks/faces/aligning.py), and a
report of which photos were used and which were rejected, and why.
"""

from __future__ import annotations

from typing import Any

from tasks.faces.config import PrepareSubjectConfig
from tasks.faces.fetch import fetch_folder, fetch_synthetic
from tasks.shards.dataset import read_manifest, write_manifest


def fetch_subject(out_dir: str, config: PrepareSubjectConfig, record: dict[str, Any], log) -> str:
    """The subject's photos: the held-out synthetic identity, or a folder of one person's photos."""
    syn = config.synthetic
    if config.source == "synthetic":
        m = fetch_synthetic(
            out_dir,
            num_images=syn.num_photos,
            num_identities=1,
            seed=syn.seed,
            image_size=syn.image_size,
            scale_range=syn.face_scale,
            max_rotation=float(syn.max_rotation),
            subject=True,
            workers=config.workers,
            params=record,
            progress=False,
        )
    else:
        m = fetch_folder(
            config.folder,
            out_dir,
            near_duplicate_bits=config.near_duplicate_bits,
            all_training=True,
            params=record,
            log=log.warning,
        )
    log.info(f"prepare_subject photos ({m['source']}): {m['counts']} -> {out_dir}")
    return str(out_dir)


def write_subject_report(out_dir: str, min_photos: int, log) -> dict:
    """Add the used/rejected report to the subject's manifest; warn when too few photos survive."""
    manifest = read_manifest(out_dir)
    report = subject_report(manifest, min_photos)
    if report["warning"]:
        log.warning(report["warning"])
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
        report["warning"] = (
            f"only {manifest['counts']['written']} subject photos survived "
            f"(fewer than {min_photos}): DreamBooth will overfit or fail to learn the identity"
        )
    return report
