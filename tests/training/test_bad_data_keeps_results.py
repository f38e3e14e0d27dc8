"""A training stage fed bad data fails with a clear error and leaves the last good
run's files as they were.

Each test runs one training stage's own task (`flows.<stage>.<stage>_task.fn`, no Prefect server) on
tiny data and a tiny config, records every file of its outputs (model folder, checkpoints, dvclive
folder, metrics and timings) with a hash of its bytes, then runs the same stage into the same paths on
bad data: the stage must raise a clear error, and every file of the good run must still be there with
the same bytes (nothing removed, nothing rewritten, nothing added).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tasks.cartoon.config import ClassifierConfig, TrainCartoonConfig  # noqa: E402
from tasks.latent.config import TrainLdmConfig, TrainVaeConfig  # noqa: E402
from tasks.shards.dataset import AtomicShardWriter, plain_tar_members, read_manifest, write_manifest  # noqa: E402
from tests.helpers.cartoon import COLOUR_SCHEMA as SCHEMA  # noqa: E402
from tests.helpers.cartoon import TINY_CARTOON_MODEL as TINY_MODEL
from tests.helpers.cartoon import colour_cartoon_png as _image  # noqa: E402
from tests.helpers.configs import stage_config  # noqa: E402
from tests.helpers.dreambooth import db_params, make_world  # noqa: E402
from tests.helpers.latents import TINY_VAE, encode_latents, make_aligned, save_tiny_vae  # noqa: E402

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ helpers


def snapshot(root: Path) -> dict[str, str]:
    """{path under root: sha256 of its bytes} of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_intact(root: Path, before: dict[str, str], must_hold: tuple[str, ...]) -> None:
    """The good run's files are all there, byte for byte, and nothing was added."""
    assert all(any(k == m or k.startswith(m + "/") for k in before) for m in must_hold), (
        f"the good run did not write all of {must_hold}: {sorted(before)}"
    )
    after = snapshot(root)
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    added = sorted(set(after) - set(before))
    assert not removed and not changed and not added, (
        f"the failed run touched the good run's files: removed {removed[:5]}, changed {changed[:5]}, added {added[:5]}"
    )


def empty_train_split(good: Path, bad: Path) -> Path:
    """A copy of dataset `good` whose manifest lists no training shards (the validation split intact)."""
    shutil.copytree(good, bad)
    manifest = read_manifest(bad)
    for name in manifest["splits"]["train"]["shards"]:
        (bad / name).unlink()
    manifest["splits"]["train"] = {**manifest["splits"]["train"], "count": 0, "shards": [], "shard_counts": []}
    manifest.setdefault("counts", {})["train"] = 0
    if "all_shards" in manifest:
        manifest["all_shards"] = [n for n in manifest["all_shards"] if not n.startswith("train-")]
    write_manifest(bad, manifest)
    return bad


def one_train_shard(good: Path, bad: Path) -> Path:
    """A copy of dataset `good` whose training split is its first shard only (fewer samples than a batch)."""
    shutil.copytree(good, bad)
    manifest = read_manifest(bad)
    train = manifest["splits"]["train"]
    for name in train["shards"][1:]:
        (bad / name).unlink()
    if "shard_counts" in train:
        count = train["shard_counts"][0]
    else:
        with tarfile.open(bad / train["shards"][0]) as tar:
            count = len({Path(m).name.split(".", 1)[0] for m in tar.getnames()})
    manifest["splits"]["train"] = {
        **train,
        "count": count,
        "shards": train["shards"][:1],
        **({"shard_counts": [count]} if "shard_counts" in train else {}),
    }
    manifest.setdefault("counts", {})["train"] = count
    if "all_shards" in manifest:
        manifest["all_shards"] = [
            n for n in manifest["all_shards"] if not n.startswith("train-") or n in train["shards"][:1]
        ]
    write_manifest(bad, manifest)
    return bad


def truncated_train_shards(good: Path, bad: Path) -> Path:
    """A copy of dataset `good` whose training shards are cut after their first sample, at a tar
    member boundary (a valid but shorter tar): a truncated copy or download. The manifest is `good`'s
    with a note added, so the data's identity is new (another dataset, not the finished run's)."""
    shutil.copytree(good, bad)
    manifest = read_manifest(bad)
    write_manifest(bad, {**manifest, "note": "its training shards were truncated"})
    for name in manifest["splits"]["train"]["shards"]:
        data = (bad / name).read_bytes()
        members = plain_tar_members(data)
        first = members[0][0].split(".", 1)[0]
        _, start, size = [m for m in members if m[0].split(".", 1)[0] == first][-1]
        (bad / name).write_bytes(data[: start + -(-size // 512) * 512])
    return bad


# ------------------------------------------------------------------------------------------ cartoon track


def make_cartoon_shards(out: Path, damaged_png: bool = False) -> Path:
    """32 train + 8 val 16x16 cartoons in shards of 4, in preprocess_cartoons' format (the drawing of
    test_cartoon_model_stages); `damaged_png`: every training image's bytes cut in half (and a note in the
    manifest, which a stage would write with new data: its identity)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 32), ("val", 8)):
        with AtomicShardWriter(out, split, max_count=4) as w:
            for i in range(n):
                attrs = [int(rng.integers(c)) for c in SCHEMA.counts]
                png = _image(attrs, rng)
                w.write(
                    {
                        "__key__": f"{split}{i:03d}",
                        "png": png[: len(png) // 2] if damaged_png and split == "train" else png,
                        "attrs.json": json.dumps(attrs).encode(),
                    }
                )
        splits[split] = {"shards": w.shards, "count": n, "shard_counts": w.shard_counts}
    write_manifest(
        out,
        {
            "schema": SCHEMA.to_json(),
            "splits": splits,
            "counts": {s: v["count"] for s, v in splits.items()},
            **({"note": "damaged images"} if damaged_png else {}),
        },
    )
    return out


@pytest.fixture(scope="module")
def cartoon_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cartoon_data")
    good = make_cartoon_shards(root / "good")
    return good, {
        "no_train": empty_train_split(good, root / "no_train"),
        "one_train_shard": one_train_shard(good, root / "one_train_shard"),
        "truncated": truncated_train_shards(good, root / "truncated"),
        "damaged_png": make_cartoon_shards(root / "damaged_png", damaged_png=True),
    }


def test_train_cartoon_on_bad_data_keeps_the_good_run(tmp_path, cartoon_shards):
    from flows.train_cartoon import train_cartoon_task

    good, bad = cartoon_shards
    config = stage_config(
        TrainCartoonConfig,
        "train_cartoon",
        num_processes=1,
        data={"resolution": 16, "batch_size": 8, "workers": 0},
        model={**TINY_MODEL, "conditioning": "class_embedding"},
        training={"num_epochs": 1, "max_train_steps": 2, "checkpointing_steps": 1, "samples_every_epochs": 1},
        samples={"num_images": 2, "num_inference_steps": 1},
    )
    out = tmp_path / "out"
    paths = [str(out / "model"), str(out / "ckpt"), str(out / "live"), str(out / "metrics.json")]
    train_cartoon_task.fn(str(good), *paths, config)
    before = snapshot(out)
    for name, reason in (
        ("no_train", "0 train shard"),  # the shard loader's check
        ("one_train_shard", "0 batches per epoch .* training data is empty"),  # the engine's
        # found while training, after the good run's checkpoints were set aside:
        ("truncated", r"train-\d+\.tar: 1 samples where the manifest lists 4"),
        ("damaged_png", "sample 'train.*' cannot be read .* damaged or changed"),
    ):
        with pytest.raises(ValueError, match=reason):
            train_cartoon_task.fn(str(bad[name]), *paths, config)
        assert_intact(out, before, ("model", "ckpt", "live", "metrics.json", "timings"))


def test_train_attribute_classifier_on_bad_data_keeps_the_good_run(tmp_path, cartoon_shards):
    from flows.train_attribute_classifier import train_attribute_classifier_task

    good, bad = cartoon_shards
    config = stage_config(
        ClassifierConfig,
        "train_attribute_classifier",
        resolution=16,
        channels=[8, 16],
        hidden_dim=32,
        epochs=1,
        batch_size=8,
    )
    out = tmp_path / "out"
    paths = [str(out / "clf"), str(out / "clf.json")]
    train_attribute_classifier_task.fn(str(good), *paths, config)
    before = snapshot(out)
    for name, reason in (
        ("no_train", "0 train shard"),
        ("one_train_shard", "4 training images .* smaller than one batch"),
    ):
        with pytest.raises(ValueError, match=reason):
            train_attribute_classifier_task.fn(str(bad[name]), *paths, config)
        assert_intact(out, before, ("clf", "clf.json", "timings"))


# ------------------------------------------------------------------------------------------ face track


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    good = make_aligned(root / "aligned", n=24, size=16, shard_size=6)
    return good, empty_train_split(good, root / "no_train")


def test_train_vae_on_bad_data_keeps_the_good_run(tmp_path, faces):
    from flows.train_vae import train_vae_task

    good, bad = faces
    config = stage_config(
        TrainVaeConfig,
        "train_vae",
        device="cpu",
        resolution=16,
        model=TINY_VAE,
        eval_batch_size=8,
        loss={"batch_size": 4},
        training={"max_train_steps": 3, "lr_warmup_steps": 1, "log_every_steps": 1},
    )
    out = tmp_path / "out"
    paths = [str(out / "vae"), str(out / "vae.json"), str(out / "live"), str(out / "checkpoints")]
    train_vae_task.fn(str(good), *paths, config)
    before = snapshot(out)
    with pytest.raises(ValueError, match="has no 'train' images"):
        train_vae_task.fn(str(bad), *paths, config)
    assert_intact(out, before, ("vae", "vae.json", "live", "checkpoints", "timings"))


LDM_UNET = {
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}


@pytest.fixture(scope="module")
def latent_sets(tmp_path_factory, faces):
    """Latents of the aligned faces by a tiny VAE; the same faces by another VAE (another scaling
    factor), and by another with the same scaling factor; the latents with their training split emptied, and with one training shard (6 latents,
    fewer than a batch of 8)."""
    root = tmp_path_factory.mktemp("latents")
    aligned, _ = faces
    for name, seed, scale in (("vae", 0, 0.5), ("other_vae", 1, 0.7), ("same_scale_vae", 1, 0.5)):
        save_tiny_vae(root / name, seed=seed, resolution=16, scaling_factor=scale)
        encode_latents(
            str(aligned), str(root / name), str(root / f"{name}_latents"), resolution=16, batch_size=8, progress=False
        )
    empty_train_split(root / "vae_latents", root / "no_train")
    truncated_train_shards(root / "vae_latents", root / "truncated")
    one_train_shard(root / "vae_latents", root / "one_train_shard")
    return root


def test_train_ldm_on_bad_latents_keeps_the_good_run(tmp_path, latent_sets):
    from flows.train_ldm import train_ldm_task

    config = stage_config(
        TrainLdmConfig,
        "train_ldm",
        num_processes=1,
        data={"batch_size": 8, "workers": 0},
        model=LDM_UNET,
        training={
            "num_epochs": 1,
            "max_train_steps": 2,
            "checkpointing_steps": 1,
            "num_train_timesteps": 100,
            "samples_every_epochs": 1,
        },
        samples={"num_images": 1, "num_inference_steps": 1},
    )
    out = tmp_path / "out"
    paths = [str(out / "model"), str(out / "ckpt"), str(out / "live"), str(out / "metrics.json")]
    train_ldm_task.fn(str(latent_sets / "vae_latents"), str(latent_sets / "vae"), *paths, config)
    before = snapshot(out)
    for bad, reason in (
        ("other_vae_latents", "was encoded by VAE .* re-run encode_latents"),
        ("same_scale_vae_latents", "was encoded by VAE .* re-run encode_latents"),  # same factor
        ("no_train", "0 train shard"),
        ("one_train_shard", "0 batches per epoch .* training data is empty"),
        ("truncated", "1 samples where the manifest lists"),
    ):
        with pytest.raises(ValueError, match=reason):
            train_ldm_task.fn(str(latent_sets / bad), str(latent_sets / "vae"), *paths, config)
        assert_intact(out, before, ("model", "ckpt", "live", "metrics.json", "timings"))


# ------------------------------------------------------------------------------------------ DreamBooth


@pytest.fixture(scope="module")
def dreambooth_world(tmp_path_factory):
    """The DreamBooth tests' world (a tiny base model, subject latents by its VAE, class samples from it)
    plus bad subject data."""
    root = make_world(tmp_path_factory.mktemp("db"))
    # Bad subject data: a folder the subject's encoding never finished (no manifest), and a finished one
    # that holds no latents.
    (root / "missing").mkdir()
    with AtomicShardWriter(root / "empty", "train", max_count=4):
        pass
    write_manifest(
        root / "empty",
        {
            **read_manifest(root / "subject"),
            "counts": {"images": 0, "train": 0},
            "splits": {"train": {"count": 0, "shards": [], "shard_counts": []}},
            "all_shards": [],
        },
    )
    return root


def test_train_dreambooth_on_bad_subject_latents_keeps_the_good_run(tmp_path, dreambooth_world):
    from flows.train_dreambooth import train_dreambooth_task
    from tasks.dreambooth.config import TrainDreamboothConfig

    world = dreambooth_world
    config = TrainDreamboothConfig.from_params(
        db_params(
            training={"num_epochs": 1, "checkpointing_steps": 1}, samples={**db_params()["samples"], "num_images": 1}
        ),
        "train_dreambooth",
    )
    out = tmp_path / "out"
    paths = [str(out / "model"), str(out / "ckpt"), str(out / "live"), str(out / "metrics.json")]
    train_dreambooth_task.fn(str(world / "subject"), str(world / "class"), str(world / "base"), *paths, config)
    before = snapshot(out)
    for bad, reason in (
        ("missing", "manifest.json is missing: .* not a finished dataset"),
        ("empty", "holds no latents"),
    ):
        with pytest.raises((ValueError, FileNotFoundError), match=reason):
            train_dreambooth_task.fn(str(world / bad), str(world / "class"), str(world / "base"), *paths, config)
        assert_intact(out, before, ("model", "ckpt", "live", "metrics.json", "timings"))
