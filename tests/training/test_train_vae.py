"""train_vae on the shared engine: a killed run resumes exactly, and a recipe that really diverges
fails the stage with one line, leaving the last good VAE as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tasks.latent.config import TrainVaeConfig
from tasks.latent.train_vae import prepare_vae
from tasks.reporting.timings import timings_path
from tasks.training.engine import DivergenceError, StopTraining
from tests.helpers.configs import stage_config
from tests.helpers.latents import TINY_VAE, make_aligned


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return make_aligned(tmp_path_factory.mktemp("aligned"), n=40, size=16, shard_size=10)


def _config(**training) -> TrainVaeConfig:
    return stage_config(
        TrainVaeConfig,
        "train_vae",
        device="cpu",
        resolution=16,
        model=TINY_VAE,
        eval_batch_size=8,
        loss={"batch_size": 8},
        training={
            "max_train_steps": 12,
            "lr_warmup_steps": 2,
            "log_every_steps": 2,
            "checkpointing_steps": 4,
            "samples_every_epochs": 2,
            **training,
        },
    )


def _train(aligned: Path, out: Path, config: TrainVaeConfig, **kw) -> dict:
    return prepare_vae(
        str(aligned),
        str(out / "vae"),
        str(out / "vae.json"),
        str(out / "live"),
        config,
        checkpoint_dir=str(out / "checkpoints"),
        progress=False,
        log=lambda *_: None,
        **kw,
    )


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_a_killed_train_vae_resumes_where_an_uninterrupted_run_ends(aligned, tmp_path):
    torch.set_num_threads(1)
    whole = _train(aligned, tmp_path / "whole", _config())

    def kill_at_6(step):
        if step == 6:
            raise StopTraining

    with pytest.raises(StopTraining):
        _train(aligned, tmp_path / "cut", _config(), step_callback=kill_at_6)
    resumed = _train(aligned, tmp_path / "cut", _config())
    assert json.loads(timings_path(tmp_path / "cut" / "vae.json").read_text())["resumed_from_step"] == 4
    assert resumed["vae_identity"] == whole["vae_identity"]  # the same weights, bit for bit
    assert resumed["psnr_val_db"] == whole["psnr_val_db"] and resumed["training"] == whole["training"]
    curve = lambda root: (root / "live/plots/metrics/train/loss.tsv").read_text()  # noqa: E731
    assert curve(tmp_path / "cut") == curve(tmp_path / "whole")


def test_a_train_vae_that_diverges_fails_and_keeps_the_last_good_vae(aligned, tmp_path):
    torch.set_num_threads(1)
    good = _train(aligned, tmp_path, _config())
    assert good["training"]["recoveries"] == 0
    before = _files(tmp_path)
    # A learning rate of 30 sends this VAE's loss to infinity within a few steps, at every rate the
    # guard falls back to (30, 15, 7.5, 3.75): a recipe that is broken, not unlucky.
    with pytest.raises(DivergenceError, match="training diverged at step"):
        _train(aligned, tmp_path, _config(learning_rate=30.0, max_grad_norm=None, lr_warmup_steps=0))
    assert _files(tmp_path) == before
