"""`dvc repro` of the three face stages in a copy of the repo, then again: nothing reruns."""

import json

import pytest

from tasks.shards.dataset import read_manifest
from tests.helpers.e2e import assert_up_to_date, copy_repo, repro

pytestmark = pytest.mark.slow
SMALL = {
    "fetch_faces": {"synthetic": {"num_images": 24}},
    "align_faces": {"shard_size": 10, "transform_size": 512},
    "prepare_subject": {"synthetic": {"num_photos": 4}, "transform_size": 512},
}


def test_face_stages_repro_and_cache(tmp_path):
    repo = copy_repo(tmp_path, SMALL)
    repro(repo, "align_faces", "prepare_subject")
    raw = json.loads((repo / "data/faces/raw/ffhq-dataset-v2.json").read_text())
    assert len(raw) == 24 and all(len(e["in_the_wild"]["face_landmarks"]) == 68 for e in raw.values())
    aligned = read_manifest(repo / "data/faces/aligned")
    assert aligned["counts"]["written"] == 24 and len(aligned["all_shards"]) >= 3
    subject = read_manifest(repo / "data/faces/subject")
    assert len(subject["report"]["used"]) == 4 and subject["report"]["warning"] is None
    base_ids = {e["metadata"]["identity"] for e in raw.values()}
    subject_raw = json.loads((repo / "data/faces/subject_raw/ffhq-dataset-v2.json").read_text())
    assert {e["metadata"]["identity"] for e in subject_raw.values()} == {"subject"} and "subject" not in base_ids

    again = repro(repo, "align_faces", "prepare_subject")
    assert "Running stage" not in again.stdout
    assert_up_to_date(repo, "fetch_faces", "align_faces", "prepare_subject")


def test_a_photo_added_to_the_input_folder_makes_fetch_faces_stale(tmp_path):
    """fetch_faces.folder is a dvc.yaml dep (`${fetch_faces.folder}`, from params.yaml): DVC hashes its files."""
    import numpy as np
    import PIL.Image

    from tests.helpers.e2e import dvc

    repo = copy_repo(tmp_path, {"fetch_faces": {"source": "folder"}})
    photos, rng = repo / "data/inputs/faces", np.random.default_rng(0)

    def add(name):
        PIL.Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(photos / name)

    add("a.png"), add("b.png")
    repro(repo, "fetch_faces")
    assert read_manifest(repo / "data/faces/raw")["counts"]["images"] == 2  # README.md skipped
    assert_up_to_date(repo, "fetch_faces")
    add("c.png")
    out = dvc(repo, "status", "fetch_faces").stdout
    assert "changed deps" in out and "data/inputs/faces" in out, out
