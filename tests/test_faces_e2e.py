"""`dvc repro` of the three face stages in a copy of the repo, then again: nothing reruns."""
import json

import pytest

from tasks.common.shards import read_manifest
from tests.e2e import assert_up_to_date, copy_repo, repro

pytestmark = pytest.mark.slow
SMALL = {"fetch_faces": {"synthetic": {"num_images": 24}},
         "align_faces": {"shard_size": 10, "transform_size": 512},
         "prepare_subject": {"synthetic": {"num_photos": 4}, "transform_size": 512}}


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
