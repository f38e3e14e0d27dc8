"""A scale profile runs as a chain of stages, its networks at full size.

In a copy of the repo the profile is applied with `python -m tasks.config.params apply`, then only data counts and
step counts are shrunk, and `dvc repro` runs the profile's stages on CPU for a step or two: the same
code a GPU worker runs, at the profile's sizes, its fp16 mixed precision and its loader workers
included (about 2 minutes on 2 cores).

configs/ffhq256_ldm.yaml runs the same way, through DreamBooth and the face evaluation, with a
randomly initialised SD-config `AutoencoderKL` saved as a local folder standing in for the hub VAE,
and synthetic faces for FFHQ (offline): about 6 minutes on 2 cores, most of it the 83.7M VAE at
256 px and writing the 258M UNet's models and checkpoints (about 10 GB). That is more than the
suite's 15-minute budget has left, so it is marked `scale`: `make test-scale` runs it, and CI runs
that as its own step after `make test`. It guards two failures: `dvc repro` stopping after
`train_vae` with a pretrained VAE if the stage wrote no dvclive folder (dvc.yaml declares one), and,
with 10 faces (latent training shards of 8 and 1 samples, the profile's loader workers), a
DataLoader worker that runs out of shards first stopping `train_ldm` inside a Prefect flow
(tests/orchestration/test_loader_workers.py).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.e2e import REPO, apply_params, copy_repo, repro

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# configs/cartoon_seed.yaml with counts and steps cut. Its networks, resolution, scheduler, mixed
# precision, loader workers and conditioning stay as the profile has them.
CARTOON_SEED_ON_CPU = {
    "fetch_cartoons": {"num_images": 48},
    "preprocess_cartoons": {"shard_size": 24},
    "train_cartoon": {
        "data": {"batch_size": 4},
        "training": {
            "num_epochs": 1,
            "max_train_steps": 2,
            "lr_warmup_steps": 1,
            "checkpointing_steps": 2,
            "samples_every_epochs": 1,
        },
        "samples": {"num_images": 2, "num_inference_steps": 2},
    },
    "train_attribute_classifier": {"epochs": 1, "batch_size": 16},
    # a judge trained for one epoch on 43 images reads little: count whatever beats chance
    "evaluate_cartoon": {
        "guidance_scales": [0, 2],
        "num_samples": 4,
        "num_inference_steps": 2,
        "batch_size": 4,
        "grid_images": 4,
        "min_ceiling": 0.0,
        "min_ceiling_over_chance": 1.0,
    },
}


def test_cartoon_seed_profile_runs_as_a_chain(tmp_path):
    repo = copy_repo(tmp_path)
    apply_params(repo, REPO / "configs" / "cartoon_seed.yaml")
    apply_params(repo, CARTOON_SEED_ON_CPU)
    out = repro(repo, "evaluate_cartoon").stdout
    for stage in (
        "fetch_cartoons",
        "preprocess_cartoons",
        "train_cartoon",
        "train_attribute_classifier",
        "evaluate_cartoon",
    ):
        assert f"Running stage '{stage}'" in out

    unet = json.loads((repo / "models/cartoon/unet/config.json").read_text())
    assert unet["block_out_channels"] == [128, 256, 512] and unet["cross_attention_dim"] == 1280
    assert unet["sample_size"] == 64 and unet["only_cross_attention"] is True
    train = json.loads((repo / "metrics/train_cartoon.json").read_text())
    assert train["steps"] == 2 and train["resolution"] == 64 and train["conditioning"] == "cross_attention"
    params = json.loads((repo / "metrics/timings/train_cartoon.json").read_text())["memory_anatomy"][
        "trainable_parameters"
    ]
    assert 117e6 < params < 120e6, params  # the profile's 117.1M UNet + 1.4M Tau module
    evaluation = json.loads((repo / "metrics/evaluate_cartoon.json").read_text())
    assert {"reliable_accuracy_vs_ceiling_guidance_0", "reliable_accuracy_vs_ceiling_guidance_2"} <= set(evaluation)
    assert (repo / "eval/cartoon/grid_guidance_2.png").is_file()


def sd_config_vae(folder) -> str:
    """stabilityai/sd-vae-ft-mse's architecture (f=8, 4 latent channels, 83.7M parameters), random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
    ).save_pretrained(folder)
    return str(folder)


def ffhq256_on_cpu(vae: str) -> dict:
    """configs/ffhq256_ldm.yaml with counts and steps cut; its networks, resolutions, bf16 and loader
    workers kept. Offline stand-ins: synthetic faces for FFHQ, a local VAE folder for the hub id; and
    encode_latents on the CPU (the profile says cuda)."""
    return {
        "fetch_faces": {"source": "synthetic", "synthetic": {"num_images": 10}},
        "align_faces": {"shard_size": 8},
        "train_vae": {"source": vae, "eval_images": 4, "eval_batch_size": 4, "min_val_images": 1},
        "encode_latents": {"device": "cpu", "batch_size": 8},
        "train_ldm": {
            "data": {"batch_size": 2},
            "training": {"num_epochs": 1, "max_train_steps": 1, "checkpointing_steps": 1, "samples_every_epochs": 1},
            "samples": {"num_images": 1, "num_inference_steps": 1},
        },
        "prepare_subject": {"synthetic": {"num_photos": 3}},
        "sample_class": {
            "num_class_samples": 2,
            "num_inference_steps": 1,
            "batch_size": 2,
            "shard_size": 2,
            "grid_images": 2,
        },
        "train_dreambooth": {
            "instance_batch_size": 1,
            "class_batch_size": 1,
            "samples": {"num_images": 1, "num_inference_steps": 1},
            "training": {"num_epochs": 1, "max_train_steps": 1, "checkpointing_steps": 1, "samples_every_epochs": 1},
        },
        "evaluate_faces": {
            "num_samples": 2,
            "batch_size": 2,
            "num_inference_steps": 1,
            "grid_images": 2,
            "k_nearest": 1,
            "kid": {"num_subsets": 2, "subset_size": 2},
        },
    }


@pytest.mark.scale
def test_ffhq256_profile_runs_as_a_chain(tmp_path):
    vae = sd_config_vae(tmp_path / "sd-vae")
    repo = copy_repo(tmp_path / "repo")
    apply_params(repo, REPO / "configs" / "ffhq256_ldm.yaml")
    apply_params(repo, ffhq256_on_cpu(vae))
    out = repro(repo, "evaluate_faces").stdout
    assert "Running stage 'train_dreambooth'" in out and "Running stage 'evaluate_faces'" in out

    vae_metrics = json.loads((repo / "metrics/train_vae.json").read_text())
    assert vae_metrics["resolution"] == 256 and vae_metrics["downsample_factor"] == 8
    latents = json.loads((repo / "data/faces/latents/manifest.json").read_text())
    assert latents["latent_shape"] == [4, 32, 32]
    unet = json.loads((repo / "models/ldm/unet/config.json").read_text())
    assert unet["block_out_channels"] == [256, 512, 1024] and unet["sample_size"] == 32
    assert json.loads((repo / "metrics/train_ldm.json").read_text())["steps"] == 1
    assert json.loads((repo / "metrics/train_dreambooth.json").read_text())["steps"] == 1
    faces = json.loads((repo / "metrics/evaluate_faces.json").read_text())
    assert "face_detect_rate" in faces
    assert (repo / "eval/faces/comparison.png").is_file()
