"""The three cartoon-model stages as tasks (`.fn`, no Prefect server) on tiny shards made here."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tasks.cartoon.config import ClassifierConfig, TrainCartoonConfig  # noqa: E402
from tasks.shards.dataset import AtomicShardWriter, write_manifest  # noqa: E402
from tests.helpers.cartoon import COLOUR_SCHEMA as SCHEMA  # noqa: E402
from tests.helpers.cartoon import TINY_CARTOON_MODEL as TINY_MODEL
from tests.helpers.cartoon import colour_cartoon_png as _image  # noqa: E402
from tests.helpers.configs import stage_config  # noqa: E402


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 32), ("val", 8)):
        with AtomicShardWriter(out, split, max_count=16) as w:
            for i in range(n):
                attrs = [int(rng.integers(c)) for c in SCHEMA.counts]
                w.write(
                    {"__key__": f"{split}{i:03d}", "png": _image(attrs, rng), "attrs.json": json.dumps(attrs).encode()}
                )
        splits[split] = {
            "shards": w.shards,
            "count": n,
            "shard_counts": [16] * (n // 16) + ([n % 16] if n % 16 else []),
        }
    write_manifest(
        out, {"schema": SCHEMA.to_json(), "splits": splits, "counts": {s: v["count"] for s, v in splits.items()}}
    )
    return str(out)


def train_config(**overrides) -> TrainCartoonConfig:
    """params.yaml's train_cartoon with the test's tiny overrides; checkpoints every 2 steps,
    EMA and so on as the stage has them, one process unless asked."""
    return stage_config(TrainCartoonConfig, "train_cartoon", **{"num_processes": 1, **overrides})


@pytest.mark.parametrize("mode", ["class_embedding", "cross_attention"])
def test_train_classifier_evaluate_stages(tmp_path, shard_dir, mode):
    from flows.train_attribute_classifier import train_attribute_classifier_task
    from flows.train_cartoon import train_cartoon_task
    from pipelines import CartoonDiffusionPipeline
    from tasks.cartoon.evaluate import EvaluateCartoonConfig, evaluate_cartoon_task

    model_dir = str(tmp_path / "model")
    train_cartoon_task.fn(
        shard_dir,
        model_dir,
        str(tmp_path / "ckpt"),
        str(tmp_path / "live"),
        str(tmp_path / "train.json"),
        train_config(
            data={"resolution": 16, "batch_size": 8},
            model={**TINY_MODEL, "conditioning": mode},
            training={
                "num_epochs": 1,
                "max_train_steps": 3,
                "checkpointing_steps": 2,
                "cond_drop_prob": 0.2,
                "samples_every_epochs": 1,
            },
            samples={"num_images": 4, "num_inference_steps": 2},
        ),
    )
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["steps"] == 3 and metrics["conditioning"] == mode
    anatomy = json.loads((tmp_path / "timings" / "train.json").read_text())["memory_anatomy"]
    pipe = CartoonDiffusionPipeline.from_pretrained(model_dir)
    n_params = sum(p.numel() for p in pipe.unet.parameters()) + sum(p.numel() for p in pipe.tau.parameters())
    assert isinstance(pipe, CartoonDiffusionPipeline) and anatomy["trainable_parameters"] == n_params
    assert (tmp_path / "live" / "plots" / "images" / "samples" / "epoch-001.png").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()

    if mode == "cross_attention":
        return  # the classifier and evaluation do not depend on the mode: run them once
    train_attribute_classifier_task.fn(
        shard_dir,
        str(tmp_path / "clf"),
        str(tmp_path / "clf.json"),
        stage_config(
            ClassifierConfig,
            "train_attribute_classifier",
            resolution=16,
            channels=[8, 16],
            hidden_dim=32,
            epochs=1,
            batch_size=8,
        ),
    )
    clf = json.loads((tmp_path / "clf.json").read_text())
    assert set(clf["val_accuracy"]) == set(SCHEMA.names)
    # a 1-epoch judge reads little: the loosest rule (the rule itself: tests/evaluation/test_cartoon_evaluate.py)
    cfg = EvaluateCartoonConfig.from_params(
        {
            "guidance_scales": [0, 2],
            "num_samples": 4,
            "num_inference_steps": 2,
            "scheduler": "dpm",
            "seed": 0,
            "batch_size": 4,
            "grid_images": 4,
            "min_ceiling": 0.0,
            "min_ceiling_over_chance": 1.0,
        }
    )
    evaluate_cartoon_task.fn(
        model_dir,
        str(tmp_path / "clf"),
        str(tmp_path / "clf.json"),
        shard_dir,
        str(tmp_path / "eval"),
        str(tmp_path / "eval.json"),
        str(tmp_path / "attrs.json"),
        cfg,
    )
    ev, detail = json.loads((tmp_path / "eval.json").read_text()), json.loads((tmp_path / "attrs.json").read_text())
    # reliable here = the 1-epoch judge beats chance on real images: some attributes, not necessarily all
    assert ev["best_guidance"] in (0, 2) and ev["reliable_attributes"] == len(detail["reliable"]) >= 1
    assert all(a["reliable"] == (a["ceiling"] >= a["chance"]) for a in detail["attributes"].values())
    assert {"reliable_accuracy_vs_ceiling_guidance_0", "reliable_accuracy_vs_ceiling_guidance_2"} <= set(ev)
    assert set(detail["attributes"]) == set(SCHEMA.names)
    assert set(detail["attributes"]["hair_color"]["accuracy"]) == {"guidance_0", "guidance_2"}
    assert (tmp_path / "eval" / "grid_guidance_2.png").is_file()
    gif = Image.open(tmp_path / "eval" / "guidance_scales.gif")
    assert gif.n_frames == 2


def test_classifier_learns_colours(tmp_path, shard_dir):
    """The judge must read colours: on this fixture hair and face colour are the whole image."""
    from tasks.cartoon.classifier import run_classifier_training

    m = run_classifier_training(
        shard_dir,
        str(tmp_path / "clf"),
        str(tmp_path / "m.json"),
        stage_config(
            ClassifierConfig,
            "train_attribute_classifier",
            resolution=16,
            channels=[8, 16],
            hidden_dim=32,
            epochs=8,
            batch_size=8,
            learning_rate=5e-3,
            weight_decay=1e-4,
            seed=0,
        ),
        show_progress=False,
    )
    assert m["val_accuracy"]["hair_color"] >= 0.75 and m["val_accuracy"]["face_color"] >= 0.75, m["val_accuracy"]


@pytest.mark.slow
def test_two_processes_train_on_their_own_shards(tmp_path, shard_dir):
    """`num_processes: 2` re-launches the stage under `accelerate launch` (CPU processes, gloo)."""
    from flows.train_cartoon import train_cartoon_task

    train_cartoon_task.fn(
        shard_dir,
        str(tmp_path / "model"),
        str(tmp_path / "ckpt"),
        str(tmp_path / "live"),
        str(tmp_path / "train.json"),
        train_config(
            data={"resolution": 16, "batch_size": 4},
            model=TINY_MODEL,
            training={"num_epochs": 1, "checkpointing_steps": 100},
            samples={"num_images": 2, "num_inference_steps": 2},
            num_processes=2,
        ),
    )
    metrics = json.loads((tmp_path / "train.json").read_text())
    # 32 training samples in 2 shards of 16: each process reads one shard, 4 batches of 4 each.
    assert metrics["processes"] == 2 and metrics["steps"] == 4
    assert (tmp_path / "model" / "model_index.json").is_file()
    assert not (tmp_path / "ckpt.job.json").exists()
