"""evaluate_faces when faces ARE found in the samples.

tests/evaluation/test_evaluate_faces.py runs the stage on tiny untrained models, whose samples hold no face, so
only the "no face found" branch (kid_dlib None, id_top1 None) is taken. Here the models' samples are
replaced by real photos (a tiny model cannot learn faces in a test's time); everything else is the
stage function `tasks.evaluation.evaluate.evaluate_faces` as the flow runs it: dlib detection and
descriptors, the real-vs-real floor, FD, KID, precision/recall, id_top1, targets, files.

The photos are the ones the existing test uses (astronaut and Grace Hopper, shipped by scikit-image
and matplotlib), which dlib finds at 64 px; the synthetic faces of tasks/synthetic/faces.py were
measured here at 25-50 % detected once aligned to 64 px, too few to make the figures exact.

Sets (indices into `_photos()`, tests.helpers.faces.package_photos: 0-5 astronaut, 6-11 Grace Hopper; even = unmirrored):
- real (val split) = Hopper 6..11: reference (even positions) 6, 8, 10; held out 7, 9, 11;
- subject photos = astronaut 0, 2, 4;
- base samples = class samples = the held-out Hopper faces 7, 9, 11 (so base == floor exactly);
- subject samples = astronaut 1, 3, 5 (the subject, mirrored: not copies of the photos);
- untrained samples: the real untrained model's (no faces).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tasks.evaluation import faces as faces_module
from tasks.evaluation.evaluate import evaluate_faces
from tasks.evaluation.faces import EvaluateFacesConfig
from tests.helpers.faces import EVALUATE_FACES_PARAMS as PARAMS
from tests.helpers.faces import package_photos as _photos
from tests.helpers.faces import save_face_models
from tests.helpers.faces import write_faces as _write_faces

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_faces_found")
    photos = _photos()
    aligned = _write_faces(root / "aligned", {"train": photos[:2], "val": photos[6:12]})
    subject = _write_faces(root / "subject", {"train": [photos[0], photos[2], photos[4]]})
    save_face_models(root)
    return {"root": root, "photos": photos, "aligned": aligned, "subject": subject}


def test_evaluate_faces_with_faces_found_gives_real_figures(found, monkeypatch):
    photos, root = found["photos"], found["root"]
    sets = {
        "base": [photos[7], photos[9], photos[11]],
        "subject": [photos[1], photos[3], photos[5]],
        "class": [photos[7], photos[9], photos[11]],
    }
    real_sample_images, real_untrained = faces_module.sample_images, faces_module.untrained_pipeline
    untrained, calls = [], []

    def keep_untrained(base_pipe, seed):
        untrained.append(real_untrained(base_pipe, seed))
        return untrained[-1]

    def sample_images(pipe, cfg, **kw):
        if untrained and pipe is untrained[-1]:
            calls.append("untrained")
            return real_sample_images(pipe, cfg, **kw)  # the real thing: random weights draw no face
        name = {None: "base", True: "subject", False: "class"}[kw.get("subject")]
        calls.append(name)
        assert kw.get("guidance_scale", 1.0) == (2.0 if name == "subject" else 1.0)
        return [im.copy() for im in sets[name]]

    monkeypatch.setattr(faces_module, "sample_images", sample_images)
    monkeypatch.setattr(faces_module, "untrained_pipeline", keep_untrained)
    cfg = EvaluateFacesConfig.from_params({**PARAMS, "num_samples": 3, "subject": "required"}, "evaluate_faces")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missed target warns: none may be missed here
        head = evaluate_faces(
            found["aligned"],
            str(root / "ldm"),
            found["subject"],
            str(root / "db"),
            str(root / "out" / "metrics.json"),
            str(root / "out" / "eval"),
            cfg,
        )
    assert sorted(calls) == ["base", "class", "subject", "untrained"]
    assert json.loads((root / "out" / "metrics.json").read_text()) == head

    # Faces found everywhere but in the untrained model's samples.
    assert head["face_detect_rate"] == head["face_detect_rate_real"] == head["face_detect_rate_subject"] == 1.0
    assert head["face_detect_rate_untrained"] == 0.0 and head["kid_dlib_untrained"] is None
    # Base samples are the held-out real faces: every distribution figure equals the real-vs-real floor.
    for key in ("fd_dlib", "kid_dlib", "precision_dlib", "recall_dlib"):
        assert isinstance(head[key], float), key
        assert head[key] == pytest.approx(head[f"{key}_floor"], abs=1e-9), key
    assert head["fd_dlib"] > 0 and 0 <= head["precision_dlib"] <= 1 and 0 <= head["recall_dlib"] <= 1
    assert head["kid_dlib_std"] is not None and head["kid_dlib_std"] >= 0
    assert head["detect_rate_ok"] and head["kid_ok"] and head["target_met"]
    # Identity: subject samples are all nearest the subject photos; class and base samples never.
    assert head["id_top1"] == 1.0 and head["id_top1_class"] == 0.0 and head["id_top1_base"] == 0.0
    assert head["id_top1_ceiling"] == 1.0 and head["id_top1_se"] == 0.0
    assert head["subject_identity_ok"] and head["subject_prior_ok"]
    # Prior preservation: class samples equal the base samples: their FD is 0 (KID on 3-face subsets is
    # too noisy to say more than that it is a number).
    assert isinstance(head["kid_dlib_prior"], float)
    prior_fd = json.loads((root / "out" / "eval" / "details.json").read_text())["subject"]["prior"]["fd_dlib"]
    assert prior_fd == pytest.approx(0.0, abs=1e-3 * head["fd_dlib"]), (prior_fd, head["fd_dlib"])
    # Descriptors of one person are closer to each other than to the other person's.
    assert 0 < head["diversity"] < head["identity_distance"] + 1 and head["nearest_photo_distance"] > 0

    details = json.loads((root / "out" / "eval" / "details.json").read_text())
    assert details["counts"]["real_detected"] == 6 and details["counts"]["reference"] == 3
    base = details["sets"]["base"]
    assert base["num_faces"] == 3 and base["kid_subset_size"] >= 2
    sub = details["subject"]
    assert sub["class_vs_real"]["fd_dlib"] is not None and sub["face_detect_rate_class"] == 1.0
    assert sub["identity_distance"] < sub["identity_distance_class"]  # subject samples nearer the photos
