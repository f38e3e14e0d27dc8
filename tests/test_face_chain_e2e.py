"""The face chain in a copy of the repo, built once: `dvc repro train_dreambooth` (faces -> VAE ->
latents -> LDM -> subject latents + class samples -> DreamBooth), then the cache rules of both model
stages: nothing reruns; a DreamBooth training param re-runs only train_dreambooth (the class samples
stay); a sampling param samples again; a train_ldm param re-runs only train_ldm; a new VAE re-encodes
the latents."""
import json

import pytest
import torch

from tasks.common.shards import read_manifest
from tests.e2e import apply_params, assert_up_to_date, copy_repo, dvc, repro

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # nine stages from scratch
SMALL = {"fetch_faces": {"synthetic": {"num_images": 24}},
         "align_faces": {"shard_size": 10, "transform_size": 512, "output_size": 64},
         "train_vae": {"resolution": 32, "training": {"max_steps": 4, "batch_size": 4}},
         "encode_latents": {"batch_size": 8},
         "train_ldm": {"data": {"batch_size": 4},
                       "model": {"block_out_channels": [16, 32], "norm_num_groups": 8},
                       "training": {"num_epochs": 1, "samples_every_epochs": 1},
                       "samples": {"num_images": 2, "num_inference_steps": 2}}}


TINY = {**SMALL,
        "prepare_subject": {"synthetic": {"num_photos": 4}, "output_size": 64, "transform_size": 512,
                            "min_photos": 3},
        "sample_class": {"num_class_samples": 6, "num_inference_steps": 2, "batch_size": 4, "shard_size": 4,
                         "grid_images": 4},
        "train_dreambooth": {"instance_batch_size": 2, "class_batch_size": 2,
                             "samples": {"num_images": 2, "num_inference_steps": 2},
                             "training": {"num_epochs": 2, "samples_every_epochs": 2, "checkpointing_steps": 2}}}


def test_face_chain_repro_and_cache_rules(tmp_path):
    repo = copy_repo(tmp_path, TINY)
    repro(repo, "train_dreambooth")
    # The latent track.
    vae_metrics = json.loads((repo / "metrics/train_vae.json").read_text())
    assert vae_metrics["psnr_val_db"] > 0 and vae_metrics["downsample_factor"] == 4
    latents = read_manifest(repo / "data/faces/latents")
    assert latents["vae"]["identity"] == vae_metrics["vae_identity"] and latents["latent_shape"] == [4, 8, 8]
    assert latents["counts"]["images"] == 24
    ldm = json.loads((repo / "metrics/train_ldm.json").read_text())
    assert ldm["vae_identity"] == vae_metrics["vae_identity"] and ldm["steps"] >= 1
    from pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(repo / "models/ldm")
    pipe.set_progress_bar_config(disable=True)
    assert pipe(batch_size=1, num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images.shape == (1, 32, 32, 3)
    assert_up_to_date(repo, "train_vae", "encode_latents", "train_ldm")

    # DreamBooth.
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
    apply_params(repo, {"train_dreambooth": {"prior_loss_weight": 0.5}})
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'train_dreambooth'" in out and "Running stage 'sample_class'" not in out
    # A sampling param: sampled again (and the fine-tuning follows).
    apply_params(repo, {"sample_class": {"seed": 1}})
    out = repro(repo, "train_dreambooth").stdout
    assert "Running stage 'sample_class'" in out and "Running stage 'encode_subject'" not in out
    assert read_manifest(repo / "data/faces/class_latents")["fingerprint"] != klass["fingerprint"]
    assert_up_to_date(repo, "train_dreambooth")

    # A train_ldm param: only train_ldm runs again.
    apply_params(repo, {"train_ldm": {"training": {"seed": 1}}})
    out = repro(repo, "train_ldm").stdout
    assert "Running stage 'train_ldm'" in out and "Running stage 'encode_latents'" not in out

    # A new VAE: the latents are encoded again, keyed by the new identity.
    apply_params(repo, {"train_vae": {"training": {"seed": 1}}})
    out = repro(repo, "encode_latents").stdout
    assert "Running stage 'train_vae'" in out and "Running stage 'encode_latents'" in out
    new = read_manifest(repo / "data/faces/latents")
    assert new["vae"]["identity"] != latents["vae"]["identity"]
    assert new["vae"]["identity"] == json.loads((repo / "metrics/train_vae.json").read_text())["vae_identity"]
    assert "train_ldm" in dvc(repo, "status", "train_ldm").stdout  # stale now
