"""Typed configs of the latent stages (train_vae, encode_latents, train_ldm); values in params.yaml."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.schedulers import SCHEDULERS
from tasks.common.config import ConfigError, StageConfig
from tasks.training.config import TrainConfig


@dataclass(frozen=True)
class VaeModelConfig(StageConfig):  # pipelines.autoencoder.PatchAutoencoderKL
    patch_size: int       # f: pixels per latent side
    latent_channels: int
    hidden_channels: int  # width of every layer (all at the latent resolution)
    encoder_blocks: int   # residual blocks
    decoder_blocks: int


@dataclass(frozen=True)
class VaeTrainingConfig(StageConfig):
    seed: int
    batch_size: int
    max_steps: int
    max_seconds: float | None
    learning_rate: float
    lr_warmup_steps: int
    max_grad_norm: float | None
    kl_weight: float
    l1_weight: float
    mse_weight: float
    hflip: bool
    logvar_init: float | None
    log_every: int


@dataclass(frozen=True)
class TrainVaeConfig(StageConfig):
    source: str                    # train | a hub id | a local diffusers folder
    subfolder: str | None
    resolution: int
    eval_batch_size: int
    eval_images: int | None
    device: str
    min_gain_over_bilinear_db: float  # target: validation PSNR at least this far above the bilinear reference
    min_val_images: int            # fewer: the PSNR is flagged reliable: false
    model: VaeModelConfig          # source train only
    training: VaeTrainingConfig    # source train only


@dataclass(frozen=True)
class EncodeLatentsConfig(StageConfig):
    resolution: int | None
    flip: bool
    batch_size: int
    device: str
    precision: str
    num_processes: int


@dataclass(frozen=True)
class LdmDataConfig(StageConfig):
    batch_size: int
    shuffle_buffer: int
    workers: int
    flip_prob: float


@dataclass(frozen=True)
class LdmModelConfig(StageConfig):
    block_out_channels: list[int]
    layers_per_block: int
    down_block_types: list[str]
    up_block_types: list[str]
    attention_head_dim: int
    norm_num_groups: int


@dataclass(frozen=True)
class LdmSamplesConfig(StageConfig):
    num_images: int
    scheduler: str
    num_inference_steps: int
    seed: int

    def __post_init__(self):  # checked at start-up, not at the first grid after minutes of training
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"train_ldm.samples.scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")


@dataclass(frozen=True)
class TrainLdmConfig(StageConfig):
    num_processes: int
    data: LdmDataConfig
    model: LdmModelConfig
    training: TrainConfig
    samples: LdmSamplesConfig
