"""`dvc repro train_dreambooth` in a copy of the repo (faces -> VAE -> latents -> LDM -> subject
latents + class samples -> DreamBooth), then the cache rules: nothing reruns; a training param
re-runs only train_dreambooth (the class samples stay); a sampling param samples again."""
import json

import pytest
import torch

from tasks.common.shards import read_manifest
from tests.e2e import assert_up_to_date, copy_repo, repro
from tests.test_ldm_e2e import SMALL, _overlay

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # nine stages from scratch
TINY = {**SMALL,
        "prepare_subject": {"synthetic": {"num_photos": 4}, "output_size": 64, "transform_size": 512,
                            "min_photos": 3},
        "sample_class": {"num_class_samples": 6, "num_inference_steps": 2, "batch_size": 4, "shard_size": 4,
                         "grid_images": 4},
        "train_dreambooth": {"instance_batch_size": 2, "class_batch_size": 2,
                             "samples": {"num_images": 2, "num_inference_steps": 2},
                             "training": {"num_epochs": 2, "samples_every_epochs": 2, "checkpointing_steps": 2}}}


def test_dreambooth_repro_and_cache_rules(tmp_path):
    repo = copy_repo(tmp_path, TINY)
    repro(repo, "train_dreambooth")
    subject, klass = read_manifest(repo / "data/faces/subject_latents"), read_manifest(repo / "data/faces/class_latents")
    assert subject["counts"]["images"] == 4 and klass["counts"]["images"] == 6
    assert subject["vae"]["identity"] == klass["vae"]["identity"] == klass["base"]["vae"]
    metrics = json.loads((repo / "metrics/train_dreambooth.json").read_text())
    assert metrics["steps"] == 4 and metrics["base_identity"] == klass["base"]["identity"]
    assert metrics["final_instance_loss"] > 0 and metrics["final_prior_loss"] > 0
    assert (repo / "eval/dreambooth/class_samples.png").is_file()
    assert list((repo / "dvclive/train_dreambooth/plots/images").rglob("*.png"))
    from pipelines.dreambooth import load_subject_pipeline

    pipe = load_subject_pipeline(repo / "models/dreambooth")
    assert pipe.has_identifier
    images = pipe(batch_size=1, subject=False, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3)
    assert_up_to_date(repo, "train_dreambooth")

    # A training param: only train_dreambooth runs; the class samples are not drawn again.
    _overlay(repo, {"train_dreambooth": {"prior_loss_weight": 0.5}})
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'train_dreambooth'" in out and "Running stage 'sample_class'" not in out
    # A sampling param: sampled again (and the fine-tuning follows).
    _overlay(repo, {"sample_class": {"seed": 1}})
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'sample_class'" in out and "Running stage 'encode_subject'" not in out
    assert read_manifest(repo / "data/faces/class_latents")["fingerprint"] != klass["fingerprint"]
    assert_up_to_date(repo, "train_dreambooth")
