"""evaluate_faces end to end on tiny models: real faces from package photos, a random base model,
a subject model with an identifier; metrics, grids, determinism and the subject switch."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from flows.evaluate_faces import evaluate_faces_task
from tasks.config.typed import ConfigError
from tasks.evaluation.faces import EvaluateFacesConfig, evaluate_subject_model, subject_targets, targets
from tests.helpers.faces import EVALUATE_FACES_PARAMS as PARAMS
from tests.helpers.faces import package_photos as _photos
from tests.helpers.faces import save_face_models
from tests.helpers.faces import write_faces as _write_faces

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_faces")
    photos = _photos()
    aligned = _write_faces(root / "aligned", {"train": photos[:2], "val": photos})
    subject = _write_faces(root / "subject", {"train": photos[:6]})  # the astronaut
    save_face_models(root)
    return {"root": root, "aligned": aligned, "subject": subject, "ldm": str(root / "ldm"), "db": str(root / "db")}


def _run(setup, out: str, subject_model: str, **over):
    cfg = EvaluateFacesConfig.from_params({**PARAMS, **over}, "evaluate_faces")
    root = setup["root"]
    head = evaluate_faces_task.fn(
        setup["aligned"],
        setup["ldm"],
        setup["subject"],
        subject_model,
        str(root / out / "metrics.json"),
        str(root / out / "eval"),
        cfg,
    )
    return head, root / out


def test_stage_end_to_end(setup):
    head, out = _run(setup, "a", setup["db"])
    assert json.loads((out / "metrics.json").read_text()) == head
    # real faces: the package photos are found; an untrained tiny model draws no faces
    assert head["face_detect_rate_real"] == 1.0
    assert head["face_detect_rate"] == 0.0 and head["face_detect_rate_untrained"] == 0.0
    assert head["kid_dlib"] is None and head["target_met"] is False
    # the real-vs-real floor: 6 reference vs 6 held-out faces of two people
    assert head["kid_dlib_floor"] is not None and head["fd_dlib_floor"] > 0
    assert 0 <= head["precision_dlib_floor"] <= 1
    # subject part ran on the identifier model
    assert "id_top1" in head and head["face_detect_rate_subject"] == 0.0
    assert head["subject_identity_ok"] is False and head["id_top1_ceiling"] is not None
    details = json.loads((out / "eval" / "details.json").read_text())
    assert details["counts"]["real"] == 12 and details["counts"]["reference"] == 6
    assert details["subject"]["has_identifier"] is True and details["subject"]["num_subject_photos"] == 6
    assert details["subject"]["face_detect_rate_photos"] == 1.0
    # photos of one person are closer to each other than to Grace Hopper
    assert details["subject"]["diversity_photos"] < 0.6
    names = sorted(p.name for p in (out / "eval").glob("*.png"))
    assert names == ["base.png", "class.png", "comparison.png", "real.png", "subject.png", "untrained.png"]
    with Image.open(out / "eval" / "comparison.png") as grid:
        assert grid.size == (80 + 4 * 64, 5 * 64)

    # the same models give the same figures
    again, _ = _run(setup, "b", setup["db"])
    assert again == head


def test_subject_switch(setup):
    head, out = _run(setup, "c", str(setup["root"] / "missing"))  # auto: no model -> base metrics only
    assert "id_top1" not in head and not (out / "eval" / "subject.png").exists()
    with pytest.raises(FileNotFoundError, match="required"):
        _run(setup, "d", str(setup["root"] / "missing"), subject="required")
    head, _ = _run(setup, "e", setup["db"], subject="off")
    assert "id_top1" not in head


def test_evaluate_subject_model_for_variants(setup):
    cfg = EvaluateFacesConfig.from_params(PARAMS, "evaluate_faces")
    result = evaluate_subject_model(setup["db"], setup["ldm"], setup["subject"], setup["aligned"], cfg)
    assert len(result["images"]["subject"]) == 4 and len(result["images"]["class"]) == 4
    assert result["metrics"]["identity_distance_photos"] > 0


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown"):
        EvaluateFacesConfig.from_params({**PARAMS, "nmu_samples": 3}, "evaluate_faces")
    with pytest.raises(ConfigError, match="missing"):
        EvaluateFacesConfig.from_params({k: v for k, v in PARAMS.items() if k != "seed"}, "evaluate_faces")
    with pytest.raises(ValueError, match="subject"):
        EvaluateFacesConfig.from_params({**PARAMS, "subject": "maybe"}, "evaluate_faces")
    with pytest.raises(ValueError, match="subject_guidance_scale"):
        EvaluateFacesConfig.from_params({**PARAMS, "subject_guidance_scale": 0.5}, "evaluate_faces")
    with pytest.raises(
        ConfigError, match=r"^evaluate_faces.scheduler must be one of ddpm, ddim, dpm, dpm_sde, got 'dpm-sde'$"
    ):
        EvaluateFacesConfig.from_params({**PARAMS, "scheduler": "dpm-sde"}, "evaluate_faces")


def test_subject_targets_rule():
    ok = {"id_top1": 0.7, "id_top1_class": 0.06, "id_top1_base": 0.03, "id_top1_ceiling": 0.86}
    assert subject_targets(ok) == {"subject_identity_ok": True, "subject_prior_ok": True}
    # below 80% of the ceiling (0.688)
    assert not subject_targets({**ok, "id_top1": 0.68})["subject_identity_ok"]
    # not 0.4 above the base
    assert not subject_targets({**ok, "id_top1_base": 0.31, "id_top1_class": 0.31})["subject_identity_ok"]
    # class samples drift into the subject
    assert not subject_targets({**ok, "id_top1_class": 0.09})["subject_prior_ok"]
    # a figure missing (no faces found) is a miss, not a pass
    assert subject_targets({**ok, "id_top1": None, "id_top1_class": None}) == {
        "subject_identity_ok": False,
        "subject_prior_ok": False,
    }


def test_targets_rule():
    floor = {"kid_dlib": 0.0}
    assert targets({"face_detect_rate": 0.4, "kid_dlib": 0.01}, {"kid_dlib": 0.05}, floor, 0.5, 0.7)["target_met"]
    # detection below 70% of the real rate
    assert not targets({"face_detect_rate": 0.3, "kid_dlib": 0.01}, {"kid_dlib": 0.05}, floor, 0.5, 0.7)["target_met"]
    # KID nearer the untrained model than the floor
    assert not targets({"face_detect_rate": 0.4, "kid_dlib": 0.04}, {"kid_dlib": 0.05}, floor, 0.5, 0.7)["kid_ok"]
    # an untrained model with no faces at all is infinitely far
    assert targets({"face_detect_rate": 0.4, "kid_dlib": 0.04}, {"kid_dlib": None}, floor, 0.5, 0.7)["kid_ok"]


def test_compare_samplers_prints_the_stage_figures_per_sampler(setup, tmp_path, capsys):
    from benchmarks.compare_samplers import main

    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"evaluate_faces": PARAMS}))  # JSON is YAML
    rows = main(
        [
            "ddim:2",
            "dpm_sde:3:trailing",
            "--base-dir",
            setup["ldm"],
            "--aligned-dir",
            setup["aligned"],
            "--params",
            str(params),
            "--num-samples",
            "3",
        ]
    )
    assert [(r["scheduler"], r["steps"], r["spacing"]) for r in rows] == [
        ("ddim", 2, "leading"),
        ("dpm_sde", 3, "trailing"),
    ]
    # the untrained tiny model draws no faces: rates 0, distances undefined
    assert all(r["face_detect_rate"] == 0.0 and r["fd_dlib"] is None for r in rows)
    out = capsys.readouterr().out
    assert "real faces: 12, 100% found" in out
    assert "| ddim | 2 | leading | 0% | - | - | - | - |" in out and "| dpm_sde | 3 | trailing | 0% |" in out
    for bad in ("dpm_sde", "dpm_sde:x", "ddim:25:middle"):
        with pytest.raises(SystemExit):
            main([bad, "--params", str(params)])
    assert "expected scheduler:steps" in capsys.readouterr().err
