"""The scorecard (tasks/reporting/scorecard.py) on small metrics files made in the test
(tests/helpers/scorecard_metrics.py): targets met, a target missed against params.yaml's threshold,
a missing metrics file, a null or NaN figure, a skipped subject evaluation; the --strict exit status
and the markdown file."""

from __future__ import annotations

import json
import math

import pytest

from tasks.reporting import scorecard
from tests.helpers.scorecard_metrics import METRICS, PARAMS, make_root


def row(card: scorecard.Card, stage: str) -> scorecard.Row:
    return next(r for r in card.rows if r.stage == stage)


def test_every_target_met_and_the_image_to_look_at(tmp_path, capsys):
    card = scorecard.build(make_root(tmp_path))
    assert [r.status for r in card.rows] == [scorecard.MET] * 8
    assert card.verdict() == "all 8 targets met"
    assert row(card, "train_ldm").image == "dvclive/train_ldm/plots/images/samples/epoch-160.png"  # the latest
    assert row(card, "evaluate_cartoon").image == "eval/cartoon/grid_guidance_2.png"  # the best guidance's
    assert row(card, "train_vae").image is None  # the stage writes none: said, not hidden
    assert "params train_vae.min_gain_over_bilinear_db" in row(card, "train_vae").target

    assert scorecard.main(["--root", str(tmp_path), "--strict"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-2] == "==> verdict: all 8 targets met"
    assert "look at: eval/faces/comparison.png" in out
    assert "all 8 targets met" in (tmp_path / "scorecard.md").read_text()


def test_a_missed_target_is_judged_by_params_yaml_and_fails_only_strict(tmp_path, capsys):
    root = make_root(tmp_path, train_vae={"psnr_gain_over_bilinear_db": 2.1})
    card = scorecard.build(root)
    vae = row(card, "train_vae")
    assert vae.status == scorecard.MISSED and vae.why == "+2.10 < +3 dB"
    assert card.verdict() == "1 of 8 targets missed: train_vae psnr_gain_over_bilinear_db +2.10 < +3 dB"
    # the threshold is params.yaml's, not a number in the code
    assert (
        row(scorecard.build(root, {"train_vae": {"min_gain_over_bilinear_db": 2.0}}), "train_vae").status
        == scorecard.MET
    )

    assert scorecard.main(["--root", str(root)]) == 0  # make repro's use: the card never fails the run
    assert scorecard.main(["--root", str(root), "--strict", "--output", "-"]) == 1
    out = capsys.readouterr().out
    assert "!![MISSED]    train_vae: psnr_gain_over_bilinear_db = +2.10 dB" in out
    assert "==> VERDICT: 1 of 8 targets missed" in out
    assert "| **MISSED** | `train_vae` |" in (root / "scorecard.md").read_text()


def test_a_stage_flag_saying_missed_counts_even_when_the_figure_clears_params(tmp_path):
    card = scorecard.build(make_root(tmp_path, evaluate_faces={"kid_ok": False, "target_met": False}))
    base = row(card, "evaluate_faces (base)")
    assert base.status == scorecard.MISSED and "not nearer the floor" in base.why


def test_a_missing_metrics_file_is_a_miss_named_in_the_verdict(tmp_path):
    card = scorecard.build(make_root(tmp_path, train_cartoon=None))
    cartoon = row(card, "train_cartoon")
    assert cartoon.status == scorecard.NO_FILE and cartoon.value is None
    assert card.verdict() == "1 of 8 targets missed: train_cartoon: metrics/train_cartoon.json not found"


def test_a_diverged_face_track_null_and_nan_figures_are_misses(tmp_path):
    """The day this card was made for: the VAE diverged, no face was found in any sample."""
    root = make_root(
        tmp_path,
        train_vae={"psnr_gain_over_bilinear_db": -11.9, "target_met": False},
        train_ldm={"final_loss": math.nan},
        evaluate_faces={
            "face_detect_rate": None,
            "kid_dlib": None,
            "target_met": False,
            "id_top1": None,
            "subject_identity_ok": False,
        },
    )
    card = scorecard.build(root)
    assert [r.status for r in card.rows[:5]] == [
        scorecard.MISSED,
        scorecard.NO_FIGURE,
        scorecard.MET,
        scorecard.NO_FIGURE,
        scorecard.NO_FIGURE,
    ]
    assert row(card, "train_ldm").why == "NaN"
    assert row(card, "evaluate_faces (base)").why == "null; kid_dlib null (too few faces found)"
    verdict = card.verdict()
    assert verdict.startswith("4 of 8 targets missed: train_vae psnr_gain_over_bilinear_db -11.90 < +3 dB; ")
    assert "train_ldm final_loss: no figure (NaN)" in verdict
    assert "evaluate_faces (subject) id_top1: no figure (null)" in verdict


def test_a_subject_evaluation_turned_off_is_skipped_not_missed(tmp_path):
    drop = ("id_top1", "subject_identity_ok", "subject_prior_ok")
    root = make_root(tmp_path, params=PARAMS.replace("subject: required", "subject: off"))  # YAML 1.2: "off"
    data = {k: v for k, v in METRICS["evaluate_faces.json"].items() if k not in drop}
    (root / "metrics/evaluate_faces.json").write_text(json.dumps(data))
    card = scorecard.build(root)
    assert row(card, "evaluate_faces (subject)").status == scorecard.SKIPPED
    assert card.verdict() == "all 7 targets met (1 skipped: evaluate_faces (subject) evaluate_faces.subject: off)"
    required = scorecard.build(root, {**scorecard.load_params(root), "evaluate_faces": {"subject": "required"}})
    assert row(required, "evaluate_faces (subject)").status == scorecard.NO_FIGURE


def test_the_card_travels_as_json_and_reads_back_the_same(tmp_path):
    card = scorecard.build(make_root(tmp_path, train_ldm=None), note="dvc repro failed (exit 1)")
    back = scorecard.Card.from_dict(json.loads(json.dumps(card.to_dict())))
    assert back.text() == card.text() and back.markdown() == card.markdown()
    assert "NOTE: dvc repro failed (exit 1)" in back.text()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_metrics_file_is_a_miss_not_a_crash(tmp_path, content):
    root = make_root(tmp_path)
    (root / "metrics/train_vae.json").write_text(content)
    assert row(scorecard.build(root), "train_vae").status == scorecard.NO_FILE
