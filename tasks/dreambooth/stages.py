"""Prefect tasks of the DreamBooth stages (the work lives in subject.py, class_samples.py, train.py)."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.log import get_logger
from tasks.dreambooth.config import EncodeSubjectConfig, SampleClassConfig, TrainDreamboothConfig


@task(name="encode_subject", cache_policy=NO_CACHE)  # resumption is by shard fingerprints on disk
def encode_subject_task(subject_dir: str, vae_dir: str, out_dir: str, cfg: EncodeSubjectConfig) -> dict:
    """Encode the subject's aligned photos with the base model's VAE; returns counts and the VAE identity."""
    from tasks.dreambooth.subject import encode_subject

    manifest = encode_subject(subject_dir, vae_dir, out_dir, cfg, log=get_logger().info)
    return {"counts": manifest["counts"], "vae_identity": manifest["vae"]["identity"]}


@task(name="sample_class", cache_policy=NO_CACHE)
def sample_class_task(base_dir: str, out_dir: str, grid_path: str, cfg: SampleClassConfig) -> dict:
    """Sample the class latents (prior preservation data) from the base model; returns their identity."""
    from tasks.dreambooth.class_samples import sample_class

    manifest = sample_class(base_dir, out_dir, grid_path, cfg, log=get_logger().info)
    return {"count": manifest["counts"]["images"], "base": manifest["base"]["identity"],
            "images_per_second": manifest["throughput_images_per_second"]}


@task(name="train_dreambooth", cache_policy=NO_CACHE)
def train_dreambooth_task(subject_dir: str, class_dir: str, base_dir: str, model_dir: str, checkpoint_dir: str,
                          live_dir: str, metrics_path: str, params: dict) -> str:
    """Fine-tune the base model on the subject; returns the model folder (pipeline or LoRA adapter)."""
    from tasks.common.launch import launch
    from tasks.dreambooth.train import run_training

    cfg = TrainDreamboothConfig.from_params(params, "train_dreambooth")  # fail on bad params before launching
    kwargs = dict(subject_dir=subject_dir, class_dir=class_dir, base_dir=base_dir, model_dir=model_dir,
                  checkpoint_dir=checkpoint_dir, live_dir=live_dir, metrics_path=metrics_path, params=params)
    if cfg.num_processes > 1:
        launch("tasks.dreambooth.train", Path(checkpoint_dir).with_suffix(".job.json"), kwargs, cfg.num_processes,
               cfg.training.get("mixed_precision", "no"))
    else:
        summary = run_training(**kwargs)
        get_logger().info(f"train_dreambooth: {summary['steps']} steps ({cfg.method}, identifier "
                          f"{cfg.identifier}, prior {cfg.prior_preservation}); final loss {summary['final_loss']}")
    return model_dir
