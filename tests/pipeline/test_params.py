import pytest

from tasks.config.params import apply_profile, load_params, stage_params

BASE = """# top comment
train:
  lr: 0.001     # learning rate
  model:
    channels: [32, 64]
    heads: 4
data:
  size: 64
"""


def test_profile_merges_nested_sections_and_keeps_comments(tmp_path):
    params, profile = tmp_path / "params.yaml", tmp_path / "gpu.yaml"
    params.write_text(BASE)
    profile.write_text("train:\n  model:\n    channels: [128, 256, 512]\n")
    merged = apply_profile(profile, params)
    assert merged["train"] == {"lr": 0.001, "model": {"channels": [128, 256, 512], "heads": 4}}
    assert merged["data"] == {"size": 64}
    text = params.read_text()
    assert "# learning rate" in text and "# top comment" in text


def test_quoted_strings_stay_strings_for_yaml_1_1_readers(tmp_path):
    params, profile = tmp_path / "params.yaml", tmp_path / "gpu.yaml"
    params.write_text('train:\n  precision: "no"\n  lr: 1\n')
    profile.write_text('train:\n  lr: 2\n  other: "off"\n')
    merged = apply_profile(profile, params)
    assert merged["train"] == {"precision": "no", "lr": 2, "other": "off"}


def test_profile_with_an_unknown_section_is_refused(tmp_path):
    params, profile = tmp_path / "params.yaml", tmp_path / "bad.yaml"
    params.write_text(BASE)
    profile.write_text("trian:\n  lr: 1\n")
    with pytest.raises(KeyError, match="trian"):
        apply_profile(profile, params)
    assert params.read_text() == BASE


def test_stage_params_errors_name_the_problem(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(BASE)
    assert stage_params("data", params) == {"size": 64}
    with pytest.raises(KeyError, match="no section 'eval'"):
        stage_params("eval", params)
    with pytest.raises(FileNotFoundError, match="run from the repository root"):
        load_params(tmp_path / "missing.yaml")
