"""`dvc repro` of the cartoon data stages in a copy of the repo, then again: nothing reruns."""

import json

import pytest

from tasks.shards.dataset import read_manifest
from tests.helpers.e2e import assert_up_to_date, copy_repo, repro

pytestmark = pytest.mark.slow
SMALL = {"fetch_cartoons": {"num_images": 60}, "preprocess_cartoons": {"shard_size": 25}}


def test_cartoon_data_stages_repro_and_cache(tmp_path):
    repo = copy_repo(tmp_path, SMALL)
    repro(repo, "preprocess_cartoons")
    raw = repo / "data/cartoons/raw"
    assert len(list(raw.glob("cs*.png"))) == 60 and len(list(raw.glob("cs*.csv"))) == 60
    assert json.loads((raw / "fetch.json").read_text())["source"] == "synthetic"
    manifest = read_manifest(repo / "data/cartoons/shards")
    assert manifest["counts"]["train"] + manifest["counts"]["val"] == 60
    assert manifest["schema"]["one_hot_width"] == 217 and len(manifest["schema"]["attributes"]) == 18
    assert (repo / "dvc.lock").is_file()

    again = repro(repo, "preprocess_cartoons")
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert_up_to_date(repo, "preprocess_cartoons")

    # A param of the second stage reruns that stage only.
    params = (repo / "params.yaml").read_text().replace("resolution: 64", "resolution: 32")
    (repo / "params.yaml").write_text(params)
    third = repro(repo, "preprocess_cartoons")
    assert "Running stage 'preprocess_cartoons'" in third.stdout
    assert "Running stage 'fetch_cartoons'" not in third.stdout
    assert read_manifest(repo / "data/cartoons/shards")["params"]["resolution"] == 32
