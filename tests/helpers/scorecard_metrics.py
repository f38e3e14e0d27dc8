"""Small metrics files and params.yaml of a checkout whose every scorecard target is met, to change
one figure at a time (tests/pipeline/test_scorecard.py, and the worker's and flows.submit's tests)."""

from __future__ import annotations

import json
from pathlib import Path

PARAMS = """\
train_vae:
  min_gain_over_bilinear_db: 3.0
evaluate_faces:
  min_detect_ratio: 0.9
  subject: required
evaluate_cartoon:
  min_ceiling: 0.6
"""

METRICS = {
    "train_vae.json": {
        "psnr_val_db": 30.9,
        "psnr_val_bilinear_db": 25.8,
        "psnr_gain_over_bilinear_db": 5.1,
        "target_met": True,
        "reliable": True,
        "val_images": 22,
    },
    "train_ldm.json": {"steps": 1120, "final_loss": 0.054},
    "train_dreambooth.json": {"steps": 600, "final_loss": 0.18, "final_instance_loss": 0.12, "final_prior_loss": 0.03},
    "evaluate_faces.json": {
        "face_detect_rate": 0.65,
        "face_detect_rate_real": 0.58,
        "kid_dlib": 0.0015,
        "kid_dlib_floor": 0.0,
        "kid_dlib_untrained": None,
        "fd_dlib": 0.11,
        "detect_rate_ok": True,
        "kid_ok": True,
        "target_met": True,
        "id_top1": 0.82,
        "id_top1_class": 0.02,
        "id_top1_base": 0.01,
        "id_top1_ceiling": 0.86,
        "subject_identity_ok": True,
        "subject_prior_ok": True,
    },
    "train_cartoon.json": {"steps": 1176, "final_loss": 0.061},
    "attribute_classifier.json": {"val_accuracy_mean": 0.47, "val_accuracy": {"hair": 0.17, "face_color": 0.98}},
    "evaluate_cartoon.json": {
        "reliable_accuracy_vs_ceiling": 0.72,
        "best_guidance": 2.0,
        "reliable_attributes": 1,
        "reliable_accuracy_vs_ceiling_guidance_0": 0.13,
    },
    "evaluate_cartoon_attributes.json": {"reliable": ["face_color"]},
}


def make_root(root: Path, params: str = PARAMS, **changes: dict | None) -> Path:
    """A checkout's metrics/, params.yaml and grids; changes: {file stem: dict of keys to change, or None
    to leave the file out}."""
    (root / "metrics").mkdir(parents=True)
    (root / "params.yaml").write_text(params)
    for name, data in METRICS.items():
        stem = name.removesuffix(".json")
        if stem in changes and changes[stem] is None:
            continue
        # json.dumps writes a NaN as NaN, as the stages' own json.dump does
        (root / "metrics" / name).write_text(json.dumps({**data, **(changes.get(stem) or {})}))
    for image in (
        "eval/faces/comparison.png",
        "eval/cartoon/grid_guidance_0.png",
        "eval/cartoon/grid_guidance_2.png",
        "dvclive/train_ldm/plots/images/samples/epoch-040.png",
        "dvclive/train_ldm/plots/images/samples/epoch-160.png",
    ):
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        (root / image).write_bytes(b"png")
    return root
