"""The resumable-shard protocol (tasks.shards.dataset.ResumableShards): what a run interrupted
midway leaves, and what a resumed run may reuse of it. The fingerprint must be checked on resume,
not only when a run has completed: a resumed encode with another VAE or resolution reuses nothing."""

from __future__ import annotations

import json

import pytest
import torch

from tasks.shards.dataset import PROGRESS, ResumableShards, read_manifest, shard_name
from tests.helpers.latents import encode_latents, make_aligned, save_tiny_vae

torch.set_num_threads(1)


class Killed(Exception):
    pass


def kill(name: str) -> None:
    raise Killed(name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {
        "aligned": make_aligned(root / "aligned"),
        "vae": save_tiny_vae(root / "vae", seed=0),
        "other_vae": save_tiny_vae(root / "other_vae", seed=1),
    }


def _encode(inputs, out, vae="vae", resolution=32, **kw) -> dict:
    return encode_latents(
        str(inputs["aligned"]), str(inputs[vae]), str(out), resolution=resolution, batch_size=4, progress=False, **kw
    )


def _interrupted(inputs, out) -> str:
    """An encode killed once its first shard is finished, plus a half-written shard; returns the finished one."""
    with pytest.raises(Killed) as killed:
        _encode(inputs, out, shard_callback=kill)
    assert not (out / "manifest.json").exists()
    (out / "val-000000.tar.tmp").write_bytes(b"half a shard")
    first = str(killed.value)
    assert (out / first).is_file() and (out / PROGRESS / f"{first}.json").is_file()
    return first


@pytest.mark.parametrize(
    "resume_with",
    [{}, {"vae": "other_vae"}, {"resolution": 16}],
    ids=["same inputs", "another VAE", "another resolution"],
)
def test_an_interrupted_encode_resumes_only_with_the_same_inputs(inputs, tmp_path, resume_with):
    reference = _encode(inputs, tmp_path / "reference", **resume_with)  # uninterrupted, with the resumed inputs
    every = reference["all_shards"]
    assert len(every) >= 3

    out = tmp_path / "latents"
    first = _interrupted(inputs, out)
    made: list[str] = []
    resumed = _encode(inputs, out, shard_callback=made.append, **resume_with)
    if resume_with:  # other inputs: the finished shard is not theirs, every shard is encoded again
        assert sorted(made) == sorted(every)
    else:  # the same inputs: the finished shard is kept
        assert sorted(made) == sorted(n for n in every if n != first)
    for name in every:  # either way, what an uninterrupted run of the resumed inputs writes
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    assert resumed["fingerprint"] == reference["fingerprint"] and resumed["vae"] == reference["vae"]
    assert not list(out.glob("*.tmp")) and not (out / PROGRESS).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(every + ["manifest.json"])


def _sample(i: int) -> dict:
    return {"__key__": f"k{i:03d}", "txt": f"sample {i}"}


def test_a_shard_is_finished_by_its_tar_and_its_record_under_its_fingerprint(tmp_path):
    fps = {shard_name("train", i): f"fp{i}" for i in range(3)}
    run = ResumableShards(tmp_path, fps)
    assert run.resume() == {} and run.completed() is None
    assert run.write("train", 0, [_sample(0), _sample(1)], {"split": "train"}) == {
        "split": "train",
        "count": 2,
        "fingerprint": "fp0",
    }
    assert run.write("train", 2, [])["count"] == 0  # an empty shard: a record, no tar

    def dies_midway():
        yield _sample(2)
        raise Killed

    with pytest.raises(Killed):
        run.write("train", 1, dies_midway())
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROGRESS, "train-000000.tar"]  # no half shard
    with pytest.raises(RuntimeError, match="train-000001.tar"):
        run.records()

    again = ResumableShards(tmp_path, fps)
    assert set(again.resume()) == {"train-000000.tar", "train-000002.tar"}
    again.write("train", 1, [_sample(2)])
    manifest = again.finalise(
        {"all_shards": ["train-000000.tar", "train-000001.tar"], "fingerprint": again.fingerprint}
    )
    assert not (tmp_path / PROGRESS).exists() and read_manifest(tmp_path) == manifest
    assert ResumableShards(tmp_path, dict(fps)).completed() == manifest
    with pytest.raises(ValueError):
        again.finalise({"fingerprint": "another run's"})

    changed = ResumableShards(tmp_path, {**fps, "train-000000.tar": "fp0 of other inputs"})
    assert changed.completed() is None
    (tmp_path / "manifest.json").unlink()  # an interrupted run of the changed inputs: only records are left
    for name in fps:
        (tmp_path / PROGRESS).mkdir(exist_ok=True)
        (tmp_path / PROGRESS / f"{name}.json").write_text(json.dumps({"count": 1, "fingerprint": fps[name]}))
    assert set(changed.resume()) == {"train-000001.tar"}  # train-000002 has no tar: not finished either
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROGRESS, "train-000001.tar"]
    assert [p.name for p in (tmp_path / PROGRESS).iterdir()] == ["train-000001.tar.json"]
