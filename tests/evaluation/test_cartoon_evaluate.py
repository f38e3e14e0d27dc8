"""evaluate_cartoon's headline: which attributes count, accuracy against the judge's ceiling, best scale."""

import json
import math

import pytest

from tasks.cartoon.evaluate import (
    HEADLINE,
    EvaluateCartoonConfig,
    best_scale,
    headline,
    judge_ceiling,
    reliable_attributes,
    summarise,
)
from tasks.config.typed import ConfigError

PARAMS = {
    "guidance_scales": [0, 2],
    "num_samples": 4,
    "num_inference_steps": 2,
    "scheduler": "dpm",
    "seed": 0,
    "batch_size": 4,
    "grid_images": 4,
    "min_ceiling": 0.6,
    "min_ceiling_over_chance": 2.0,
}

# variants: chance 1/2, 1/3, 1/10, 1/10
COUNTS = {"two": 2, "three": 3, "colour": 10, "blurry": 10}
CEILING = {"two": 0.9, "three": 0.65, "colour": 0.8, "blurry": 0.3}


def test_reliable_needs_both_the_ceiling_and_a_margin_over_chance():
    # two: 0.9 >= 0.6 but < 2 x 0.5 -> out; three: 0.65 < 2/3 -> out; blurry: 0.3 < 0.6 -> out
    assert reliable_attributes(CEILING, COUNTS, 0.6, 2.0) == ["colour"]
    assert reliable_attributes(CEILING, COUNTS, 0.6, 1.5) == ["two", "three", "colour"]
    assert reliable_attributes(CEILING, COUNTS, 0.0, 1.0) == list(CEILING)
    assert reliable_attributes(CEILING, COUNTS, 0.95, 1.0) == []


def test_headline_is_mean_accuracy_over_ceiling_of_reliable_attributes():
    acc = {"two": 0.5, "three": 0.1, "colour": 0.4, "blurry": 0.0}
    assert headline(acc, CEILING, ["colour"]) == pytest.approx(0.5)  # 0.4 / 0.8
    assert headline(acc, CEILING, ["two", "colour"]) == pytest.approx((0.5 / 0.9 + 0.5) / 2)
    assert math.isnan(headline(acc, CEILING, []))


def test_best_scale_takes_the_highest_headline_and_the_smaller_scale_on_ties():
    assert best_scale({0.0: 0.1, 2.0: 0.9, 3.0: 0.8}) == 2.0
    assert best_scale({0.0: 0.1, 2.0: 0.9, 3.0: 0.9}) == 2.0
    with pytest.raises(ValueError, match="no guidance scale"):
        best_scale({0.0: float("nan")})


def test_summarise_picks_best_guidance_on_reliable_attributes_not_the_raw_mean():
    # At scale 0 the unreliable attributes look good (judge noise) and lift the raw mean; at scale 2 the
    # one attribute the judge can read is right. The headline must choose 2; the raw mean would choose 0.
    acc = {
        0.0: {"two": 1.0, "three": 1.0, "colour": 0.1, "blurry": 1.0},
        2.0: {"two": 0.5, "three": 0.3, "colour": 0.72, "blurry": 0.1},
    }
    cfg = EvaluateCartoonConfig.from_params(PARAMS, "evaluate_cartoon")
    metrics, detail = summarise(acc, CEILING, COUNTS, cfg)
    assert metrics["best_guidance"] == 2.0
    assert metrics[HEADLINE] == pytest.approx(0.72 / 0.8)
    assert metrics[f"{HEADLINE}_guidance_0"] == pytest.approx(0.1 / 0.8)
    assert metrics["reliable_attributes"] == 1
    assert metrics["accuracy_mean_all"] == pytest.approx((0.5 + 0.3 + 0.72 + 0.1) / 4)
    assert all(not isinstance(v, (dict, list)) for v in metrics.values())  # flat: one dvc exp show column each
    colour = detail["attributes"]["colour"]
    assert colour == {
        "variants": 10,
        "chance": pytest.approx(0.1),
        "ceiling": 0.8,
        "reliable": True,
        "accuracy": {"guidance_0": 0.1, "guidance_2": 0.72},
    }
    assert detail["attributes"]["two"]["reliable"] is False and detail["reliable"] == ["colour"]
    assert detail["accuracy_mean_all"]["guidance_0"] == pytest.approx(0.775)


def test_summarise_refuses_a_judge_that_reads_nothing():
    cfg = EvaluateCartoonConfig.from_params({**PARAMS, "min_ceiling": 0.99}, "evaluate_cartoon")
    with pytest.raises(ValueError, match="reads no attribute reliably"):
        summarise({0.0: {n: 0.5 for n in COUNTS}}, CEILING, COUNTS, cfg)


def test_config_comes_from_params_only():
    with pytest.raises(ConfigError, match="missing.*min_ceiling_over_chance"):
        EvaluateCartoonConfig.from_params({k: v for k, v in PARAMS.items() if k != "min_ceiling_over_chance"})
    with pytest.raises(ConfigError, match="unknown.*guidance"):
        EvaluateCartoonConfig.from_params({**PARAMS, "guidance": 2})
    with pytest.raises(ValueError, match="min_ceiling_over_chance must be >= 1"):
        EvaluateCartoonConfig.from_params({**PARAMS, "min_ceiling_over_chance": 0.5})


def test_params_yaml_section_parses():
    from tasks.config.params import stage_params

    cfg = EvaluateCartoonConfig.from_params(stage_params("evaluate_cartoon"), "evaluate_cartoon")
    assert cfg.min_ceiling_over_chance >= 1


def test_judge_ceiling_reads_the_classifier_metrics(tmp_path):
    path = tmp_path / "clf.json"
    path.write_text(json.dumps({"val_accuracy": {"a": 0.5, "b": 0.9}, "val_accuracy_mean": 0.7}))
    assert judge_ceiling(str(path), ["b", "a"]) == {"b": 0.9, "a": 0.5}
    with pytest.raises(ValueError, match=r"no val_accuracy for \['c'\]"):
        judge_ceiling(str(path), ["a", "c"])
    path.write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(ValueError, match="no 'val_accuracy'"):
        judge_ceiling(str(path), ["a"])
