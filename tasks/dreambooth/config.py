"""Typed params of the DreamBooth stages (values and their comments live in params.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.samples import GuidedSamplesConfig, SamplerName
from tasks.config.typed import ConfigError, StageConfig
from tasks.training.config import TrainConfig

METHODS = ("full", "lora")


@dataclass(frozen=True)
class EncodeSubjectConfig(StageConfig):
    flip: bool
    batch_size: int
    device: str
    precision: str


@dataclass(frozen=True)
class SampleClassConfig(StageConfig):
    num_class_samples: int
    seed: int
    scheduler: SamplerName
    num_inference_steps: int
    batch_size: int
    shard_size: int
    grid_images: int
    device: str

    def __post_init__(self):
        if self.num_class_samples < 1 or self.batch_size < 1 or self.shard_size < 1 or self.num_inference_steps < 1:
            raise ConfigError(
                "sample_class: num_class_samples, batch_size, shard_size and num_inference_steps must be >= 1"
            )
        if not 0 <= self.grid_images <= self.num_class_samples:
            raise ConfigError("sample_class.grid_images must be in [0, num_class_samples]")


@dataclass(frozen=True)
class LoraParams(StageConfig):
    rank: int
    alpha: float
    target_modules: list


@dataclass(frozen=True)
class TrainDreamboothConfig(StageConfig):
    method: str
    identifier: bool
    identifier_learning_rate: float  # the identifier embedding's own AdamW rate (new weights, started at zero)
    prior_preservation: bool
    prior_loss_weight: float
    instance_batch_size: int
    class_batch_size: int
    flip_prob: float
    num_processes: int
    lora: LoraParams
    samples: GuidedSamplesConfig  # guidance_scale: the subject row of identifier models, class -> subject (1: none)
    training: TrainConfig  # the shared engine's params (tasks/training/config.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"train_dreambooth.method must be one of {METHODS}, got {self.method!r}")
        if self.instance_batch_size < 1:
            raise ConfigError("train_dreambooth.instance_batch_size must be >= 1")
        if self.prior_preservation and (self.class_batch_size < 1 or self.prior_loss_weight <= 0):
            raise ConfigError(
                "train_dreambooth: prior_preservation needs class_batch_size >= 1 and prior_loss_weight > 0"
            )
        if self.identifier and not self.prior_preservation:
            raise ConfigError(
                "train_dreambooth: identifier: true needs prior_preservation (label 0 is learnt from the class samples)"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ConfigError("train_dreambooth.flip_prob must be in [0, 1]")
        if self.lora.rank < 1:
            raise ConfigError("train_dreambooth.lora.rank must be >= 1")
        if self.samples.guidance_scale < 1:
            raise ConfigError("train_dreambooth.samples.guidance_scale must be >= 1 (1: the subject label alone)")
