"""Stage evaluate_faces: base and subject models against real faces with dlib features (the work
lives in faces.py, features.py, metrics.py)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pipelines.folders import folder_identity, model_folder
from tasks.evaluation.faces import (
    EvaluateFacesConfig,
    details,
    evaluate_base,
    evaluate_subject_model,
    headline,
    write_grids,
)
from tasks.evaluation.features import DlibFaceExtractor
from tasks.evaluation.targets import CLASS_DRIFT, ID_ABOVE_BASE, ID_CEILING_SHARE
from tasks.reporting.log import get_logger
from tasks.shards.dataset import write_json_atomic


def _subject_model_present(model_dir: str | None) -> bool:
    """A saved pipeline or a LoRA adapter (pipelines/dreambooth.py loads either)."""
    try:
        return bool(model_dir) and model_folder(model_dir).kind not in ("autoencoder", "model")
    except FileNotFoundError:
        return False


def evaluate_faces(
    aligned_dir: str,
    base_dir: str,
    subject_dir: str,
    subject_model_dir: str | None,
    metrics_path: str,
    out_dir: str,
    cfg: EvaluateFacesConfig,
) -> dict[str, Any]:
    """Evaluate the base model (and the subject model, per `subject`); write the metrics, the
    details (out_dir/details.json) and the grids; returns the headline metrics."""
    log = get_logger()
    present = _subject_model_present(subject_model_dir)
    if cfg.subject == "required" and not present:
        raise FileNotFoundError(
            f"evaluate_faces.subject is 'required' but {subject_model_dir} holds no saved "
            "pipeline or adapter: run the DreamBooth stage first"
        )
    with DlibFaceExtractor(cfg.features) as extractor:
        base = evaluate_base(base_dir, aligned_dir, cfg, extractor, log=log.info)
        subject = None
        if cfg.subject != "off" and present:
            subject = evaluate_subject_model(
                subject_model_dir, base_dir, subject_dir, aligned_dir, cfg, extractor=extractor, base=base, log=log.info
            )
    if subject is None and cfg.subject == "auto":
        log.info(f"evaluate_faces: no subject model at {subject_model_dir}: subject metrics skipped")
    # Which folders these figures are of: their model cards show them only when the folder is the same.
    head = {
        **headline(base, subject, cfg),
        "base_folder_identity": folder_identity(base_dir),
        **({"subject_folder_identity": folder_identity(subject_model_dir)} if subject is not None else {}),
    }
    if not head["target_met"]:
        msg = (
            f"evaluate_faces: base samples miss the face target (detect rate {head['face_detect_rate']:.2f} vs "
            f"{cfg.min_detect_ratio:g} x real {head['face_detect_rate_real']:.2f}; kid_dlib {head['kid_dlib']} "
            f"vs floor {head['kid_dlib_floor']} and untrained {head['kid_dlib_untrained']})"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    if subject is not None and not (head["subject_identity_ok"] and head["subject_prior_ok"]):
        msg = (
            f"evaluate_faces: the subject model misses a DreamBooth target: id_top1 {head['id_top1']} (target "
            f">= {ID_CEILING_SHARE:g} x ceiling {head['id_top1_ceiling']} and >= base {head['id_top1_base']} + "
            f"{ID_ABOVE_BASE:g}); class id_top1 {head['id_top1_class']} (target within {CLASS_DRIFT:g} of the base)"
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(metrics_path, head)
    grids = write_grids(out_dir, base, subject, cfg)
    write_json_atomic(Path(out_dir) / "details.json", details(base, subject, cfg))
    log.info(f"evaluate_faces: {metrics_path}; grids {', '.join(grids)}")
    return head
