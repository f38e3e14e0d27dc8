"""Latent diffusion: the pipeline (round-trip, determinism, schedulers) and train_ldm on the engine."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler

from pipelines import LatentDiffusionPipeline, make_scheduler
from tasks.latent.config import TrainLdmConfig
from tests.helpers.configs import stage_config
from tests.helpers.models import TINY_LDM_MODEL as TINY_UNET
from tests.helpers.models import tiny_latent_pipeline as _pipeline

torch.set_num_threads(1)


def _sample(pipe, seed=0, **kw):
    return pipe(
        batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(seed), output_type="pt", **kw
    ).images


def test_pipeline_samples_deterministically_and_round_trips(tmp_path):
    pipe = _pipeline(tmp_path)
    a, b, c = _sample(pipe, 0), _sample(pipe, 0), _sample(pipe, 1)
    assert a.shape == (2, 3, 16, 16)  # 8x8 latents, f=2 VAE
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)

    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "LatentDiffusionPipeline"
    assert index["vae"] == ["pipelines.autoencoder", "PatchAutoencoderKL"] and index["unet"] == [
        "diffusers",
        "UNet2DModel",
    ]
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, LatentDiffusionPipeline)
    assert loaded.vae.config.scaling_factor == pytest.approx(0.5)
    assert torch.equal(_sample(loaded, 0), a)

    # Swappable scheduler: DDIM from the same config, deterministic too, and a different sampler.
    loaded.scheduler = make_scheduler("ddim", loaded.scheduler.config)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    d1, d2 = _sample(loaded, 0), _sample(loaded, 0)
    assert torch.equal(d1, d2) and not torch.equal(d1, a)
    pil = loaded(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (16, 16)
    lat = loaded(batch_size=1, num_inference_steps=2, output_type="latent").images
    assert lat.shape == (1, 4, 8, 8)


def test_sde_sampler_draws_each_image_from_its_own_generator(tmp_path):
    """dpm_sde adds fresh noise every step: from the image's own generator, so image i is the same
    alone or in a batch (evaluate_faces: sample i starts from seed + i, whatever the batch size)."""
    from diffusers import DPMSolverMultistepScheduler

    from pipelines.schedulers import scheduler_code

    pipe = _pipeline(tmp_path)
    pipe.scheduler = make_scheduler("dpm_sde", pipe.scheduler.config)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert pipe.scheduler.config.num_train_timesteps == 100  # the training schedule is kept

    def draw(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(batch_size=len(gens), num_inference_steps=4, generator=gens, output_type="latent").images

    pair, alone = draw([0, 1]), draw([1])
    assert torch.allclose(pair[1], alone[0], atol=1e-5)
    assert torch.equal(draw([0, 1]), pair)
    # Same start, other step noise: the SDE's own noise changes the image; the deterministic dpm's does not exist.
    pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)
    assert not torch.allclose(draw([0, 1]), pair, atol=1e-3)
    assert scheduler_code("dpm_sde") == (
        "DPMSolverMultistepScheduler",
        "DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type='sde-dpmsolver++')",
    )


def test_pipeline_decodes_with_the_scaling_factor(tmp_path):
    pipe = _pipeline(tmp_path)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    direct = pipe.vae.decode(z / 0.5).sample
    assert torch.allclose(pipe.decode_latents(z), direct)
    with pytest.raises(ValueError, match="latents must have shape"):
        pipe(batch_size=2, latents=torch.zeros(1, 4, 8, 8))


def _train(root, name, **training):
    from tasks.latent.train import run_training

    cfg = {
        "seed": 0,
        "num_epochs": 2,
        "learning_rate": 1e-3,
        "lr_warmup_steps": 1,
        "checkpointing_steps": 2,
        "ema_decay": 0.9,
        "num_train_timesteps": 100,
        "samples_every_epochs": 1,
        **training,
    }
    config = stage_config(
        TrainLdmConfig,
        "train_ldm",
        num_processes=1,
        data={"batch_size": 4},
        model=TINY_UNET,
        training=cfg,
        samples={"num_images": 4, "num_inference_steps": 2},
    )
    out = root / name
    summary = run_training(
        str(root / "latents"),
        str(root / "vae"),
        str(out / "model"),
        str(out / "ckpt"),
        str(out / "live"),
        str(out / "metrics.json"),
        config,
        show_progress=False,
    )
    return summary, out


def test_train_ldm_on_cached_latents_saves_a_sampling_pipeline(latents):
    summary, out = _train(latents, "run")
    from tasks.latent.loader import latent_loader

    per_epoch = len(latent_loader(latents / "latents", "train", batch_size=4))
    assert per_epoch >= 2 and summary["steps"] == 2 * per_epoch and summary["epochs"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["latent_shape"] == [4, 8, 8] and metrics["scaling_factor"] == pytest.approx(0.5)
    timings = json.loads((out / "timings" / "metrics.json").read_text())  # how the run went, apart
    assert timings["memory_anatomy"]["total_mb"] > 0 and metrics["final_loss"] > 0
    assert "memory_anatomy" not in metrics and "samples_per_second" not in metrics
    assert sorted(p.name for p in (out / "live" / "plots" / "images" / "samples").iterdir()) == [
        "epoch-001.png",
        "epoch-002.png",
    ]
    pipe = LatentDiffusionPipeline.from_pretrained(out / "model")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe, LatentDiffusionPipeline)
    images = pipe(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 8 * 2, 8 * 2, 3)

    # Same seed, same run: identical weights (the loader's eps and flips are seeded per sample).
    _, again = _train(latents, "again")
    a = LatentDiffusionPipeline.from_pretrained(out / "model").unet.state_dict()
    b = LatentDiffusionPipeline.from_pretrained(again / "model").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ffhq256_profile_is_the_seed_report(tmp_path):
    import shutil
    from pathlib import Path

    from tasks.config.params import apply_profile
    from tasks.training.config import TrainConfig

    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "params.yaml", tmp_path / "params.yaml")
    p = apply_profile(repo / "configs" / "ffhq256_ldm.yaml", tmp_path / "params.yaml")
    assert p["train_vae"]["source"] == "stabilityai/sd-vae-ft-mse"
    m, d, t = p["train_ldm"]["model"], p["train_ldm"]["data"], p["train_ldm"]["training"]
    assert m["block_out_channels"] == [256, 512, 1024] and m["layers_per_block"] == 2
    assert m["down_block_types"] == ["AttnDownBlock2D"] * 3 and m["up_block_types"] == ["AttnUpBlock2D"] * 3
    assert m["attention_head_dim"] == 32
    assert d["batch_size"] == 84
    cfg = TrainConfig.from_params(t)
    assert (cfg.learning_rate, cfg.lr_warmup_steps, cfg.num_epochs, cfg.use_ema) == (8.4e-5, 500, 70, True)
    assert p["encode_latents"]["resolution"] == 256  # sd-vae-ft-mse: f=8 -> 32x32x4 latents, sample_size=32


def test_gpu_engine_benchmark_runs_the_ffhq256_profile_small_on_cpu(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_gpu_engine (for GPU workers) stays runnable: the FFHQ-256 profile through the
    engine on its own fake latents, shrunk, with the figures it reports."""
    import json
    import sys

    from benchmarks import bench_gpu_engine

    out = tmp_path / "engine.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench_gpu_engine",
            "--device",
            "cpu",
            "--small",
            "--only",
            "ldm",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--ldm-latents",
            "24",
            "--workers",
            "0",
            "--out",
            str(out),
        ],
    )
    bench_gpu_engine.main()
    r = json.loads(out.read_text())["ldm"]
    assert r["steps"] == 3 and r["batch"] == 8 and r["profile"] == "ffhq256_ldm.yaml"
    assert r["samples_per_s"] > 0 and r["tflop_per_step"] > 0
    assert "ldm      steps 3" in capsys.readouterr().out
