"""`dvc repro train_ldm` in a copy of the repo (faces -> VAE -> latents -> LDM), then the cache rules:
a train_ldm param change re-runs only train_ldm; a new VAE re-encodes the latents."""
import json

import pytest
import torch

from tasks.common.shards import read_manifest
from tests.e2e import assert_up_to_date, copy_repo, dvc, repro

pytestmark = pytest.mark.slow
SMALL = {"fetch_faces": {"synthetic": {"num_images": 24}},
         "align_faces": {"shard_size": 10, "transform_size": 512, "output_size": 64},
         "train_vae": {"resolution": 32, "training": {"max_steps": 4, "batch_size": 4}},
         "encode_latents": {"batch_size": 8},
         "train_ldm": {"data": {"batch_size": 4},
                       "model": {"block_out_channels": [16, 32], "norm_num_groups": 8},
                       "training": {"num_epochs": 1, "samples_every_epochs": 1},
                       "samples": {"num_images": 2, "num_inference_steps": 2}}}


def _overlay(repo, section: dict) -> None:
    import subprocess
    import sys
    import tempfile

    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(section, f)
    subprocess.run([sys.executable, "-m", "tasks.common.params", "apply", f.name], cwd=repo, check=True, capture_output=True)


def test_latent_track_repro_and_cache_rules(tmp_path):
    repo = copy_repo(tmp_path, SMALL)
    repro(repo, "train_ldm")
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

    # A train_ldm param: only train_ldm runs again.
    _overlay(repo, {"train_ldm": {"training": {"seed": 1}}})
    out = repro(repo, "train_ldm").stdout
    assert "Running stage 'train_ldm'" in out and "Running stage 'encode_latents'" not in out

    # A new VAE: the latents are encoded again, keyed by the new identity.
    _overlay(repo, {"train_vae": {"training": {"seed": 1}}})
    out = repro(repo, "encode_latents").stdout
    assert "Running stage 'train_vae'" in out and "Running stage 'encode_latents'" in out
    new = read_manifest(repo / "data/faces/latents")
    assert new["vae"]["identity"] != latents["vae"]["identity"]
    assert new["vae"]["identity"] == json.loads((repo / "metrics/train_vae.json").read_text())["vae_identity"]
    assert "train_ldm" in dvc(repo, "status", "train_ldm").stdout  # stale now
