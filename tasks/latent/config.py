"""Typed configs of the latent stages (train_vae, encode_latents, train_ldm); values in params.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.samples import SamplesConfig
from tasks.config.typed import StageConfig
from tasks.training.config import LoopConfig, TrainConfig


@dataclass(frozen=True)
class VaeModelConfig(StageConfig):  # pipelines.autoencoder.PatchAutoencoderKL
    patch_size: int  # f: pixels per latent side
    latent_channels: int
    hidden_channels: int  # width of every layer (all at the latent resolution)
    encoder_blocks: int  # residual blocks
    decoder_blocks: int


@dataclass(frozen=True)
class VaeLossConfig(StageConfig):
    batch_size: int
    kl_weight: float  # per latent element
    l1_weight: float
    mse_weight: float
    hflip: bool  # each face mirrored with probability 1/2
    logvar_init: float | None  # the log-variance outputs' initial bias (null: the model's own init)


@dataclass(frozen=True)
class TrainVaeConfig(StageConfig):
    source: str  # train | a hub id | a local diffusers folder
    subfolder: str | None
    resolution: int
    eval_batch_size: int
    eval_images: int | None
    device: str
    min_gain_over_bilinear_db: float  # target: validation PSNR at least this far above the bilinear reference
    min_val_images: int  # fewer: the PSNR is flagged reliable: false
    model: VaeModelConfig  # source train only
    loss: VaeLossConfig  # source train only
    training: LoopConfig  # source train only: the shared engine's loop


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
class TrainLdmConfig(StageConfig):
    num_processes: int
    data: LdmDataConfig
    model: LdmModelConfig
    training: TrainConfig
    samples: SamplesConfig
