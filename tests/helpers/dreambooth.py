"""DreamBooth on tiny models: a base pipeline, latent datasets in encode_latents' format, the stage's
params and configs, and a training run; `make_world` builds what the `world` fixture
(tests/training/conftest.py) holds."""

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler

from pipelines import LatentDiffusionPipeline
from tasks.dreambooth.base import base_identity
from tasks.dreambooth.class_samples import sample_class
from tasks.dreambooth.config import SampleClassConfig, TrainDreamboothConfig
from tasks.dreambooth.train import run_training
from tasks.shards.dataset import AtomicShardWriter, shard_name, write_manifest
from tests.helpers.models import tiny_unet

SCHEDULE = dict(
    num_train_timesteps=100,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="epsilon",
)


def make_base(path: Path, seed: int = 0) -> Path:
    """A tiny LatentDiffusionPipeline saved at `path`: a 1-level AutoencoderKL, a 2-level attention UNet."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        norm_num_groups=8,
        sample_size=8,
        scaling_factor=0.5,
    )
    unet = tiny_unet(channels=4, groups=8, attention=True)
    LatentDiffusionPipeline(unet=unet, vae=vae, scheduler=DDPMScheduler(**SCHEDULE, clip_sample=False)).save_pretrained(
        path
    )
    return path


def make_latents(path: Path, vae_id: str, n: int, seed: int, extra: dict | None = None) -> Path:
    """A latent dataset in encode_latents' format, `n` samples of 4x8x8."""
    rng = np.random.default_rng(seed)
    with AtomicShardWriter(path, "train", max_count=n) as w:
        for i in range(n):
            w.write(
                {
                    "__key__": f"s{i:03d}",
                    "mean.npy": rng.standard_normal((4, 8, 8)).astype(np.float16),
                    "std.npy": np.full((4, 8, 8), 0.1, np.float16),
                    "json": {"key": f"s{i:03d}"},
                }
            )
    write_manifest(
        path,
        {
            "kind": "faces_latents",
            "vae": {"identity": vae_id, "scaling_factor": 0.5},
            "latent_shape": [4, 8, 8],
            "counts": {"images": n, "train": n},
            "splits": {"train": {"count": n, "shards": [shard_name("train", 0)], "shard_counts": [n]}},
            "all_shards": [shard_name("train", 0)],
            **(extra or {}),
        },
    )
    return path


def training_params(**over) -> dict:
    return {
        "seed": 0,
        "num_epochs": 3,
        "max_train_steps": None,
        "gradient_accumulation_steps": 1,
        "mixed_precision": "no",
        "learning_rate": 1e-3,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_weight_decay": 0.0,
        "adam_epsilon": 1e-8,
        "lr_warmup_steps": 0,
        "max_grad_norm": 1.0,
        **SCHEDULE,
        "snr_gamma": None,
        "use_ema": True,
        "ema_decay": 0.9,
        "cond_drop_prob": 0.0,
        "checkpointing_steps": 2,
        "checkpoints_total_limit": 3,
        "samples_every_epochs": 0,
        "log_every_steps": 1,
        "guard": {"spike_factor": 3.0, "patience": 3, "max_recoveries": 3, "lr_factor": 0.5},
        **over,
    }


def db_params(**over) -> dict:
    training = over.pop("training", {})
    return {
        "method": "full",
        "identifier": True,
        "identifier_learning_rate": 1e-2,
        "prior_preservation": True,
        "prior_loss_weight": 1.0,
        "instance_batch_size": 2,
        "class_batch_size": 2,
        "flip_prob": 0.5,
        "num_processes": 1,
        "lora": {"rank": 2, "alpha": 2, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]},
        "samples": {"num_images": 0, "scheduler": "ddim", "num_inference_steps": 2, "seed": 0, "guidance_scale": 1.0},
        "training": training_params(**training),
        **over,
    }


def class_cfg(**over) -> SampleClassConfig:
    return SampleClassConfig(
        **{
            "num_class_samples": 5,
            "seed": 0,
            "scheduler": "ddim",
            "num_inference_steps": 2,
            "batch_size": 2,
            "shard_size": 2,
            "grid_images": 4,
            "device": "cpu",
            **over,
        }
    )


def dreambooth_config(params: dict) -> TrainDreamboothConfig:
    return TrainDreamboothConfig.from_params(params, "train_dreambooth")


def train_dreambooth(world, out: Path, params: dict, **kw) -> dict:
    return run_training(
        str(world / "subject"),
        str(world / "class"),
        str(world / "base"),
        str(out / "model"),
        str(out / "ckpt"),
        str(out / "live"),
        str(out / "metrics.json"),
        dreambooth_config(params),
        show_progress=False,
        **kw,
    )


def make_world(root: Path) -> Path:
    """A base model, subject latents by its VAE, and class samples from it, under `root`."""
    base_dir = make_base(root / "base")
    ident = base_identity(LatentDiffusionPipeline.from_pretrained(str(base_dir)))
    make_latents(root / "subject", ident["vae"], 4, seed=1)
    sample_class(str(base_dir), str(root / "class"), str(root / "grid.png"), class_cfg(), log=lambda *_: None)
    return root
