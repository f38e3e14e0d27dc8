"""Typed configs of the cartoon stages, one per params.yaml section (the values live in params.yaml).

Every field is required: params.yaml is the one place a value is set, and a key a stage does not
know is an error that names it (tasks/config/typed.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.config.samples import GuidedSamplesConfig
from tasks.config.typed import StageConfig
from tasks.training.config import TrainConfig


@dataclass(frozen=True)
class FetchCartoonsConfig(StageConfig):
    source: str  # synthetic | cartoonset10k | cartoonset100k | folder
    folder: str  # source folder: a folder or .tgz in Cartoon Set's format (a dvc.yaml dep)
    num_images: int  # synthetic only
    seed: int  # synthetic only
    workers: int  # 0 = all cores
    urls: dict[str, str]  # official archive name -> URL
    sha256: dict[str, str | None]  # official archive name -> expected checksum (null: record and warn)


@dataclass(frozen=True)
class PreprocessCartoonsConfig(StageConfig):
    background: list[int]
    crop: int
    resolution: int
    resample: str
    image_size: int | None
    val_fraction: float
    shard_size: int
    max_reject_fraction: float
    workers: int


@dataclass(frozen=True)
class CartoonDataConfig(StageConfig):
    resolution: int
    batch_size: int
    shuffle_buffer: int
    workers: int


@dataclass(frozen=True)
class CartoonModelConfig(StageConfig):
    conditioning: str  # class_embedding | cross_attention
    block_out_channels: list[int]
    layers_per_block: int
    down_block_types: list[str] | None
    up_block_types: list[str] | None
    norm_num_groups: int
    attention_head_dim: int
    cross_attention_dim: int
    only_cross_attention: bool
    tau_tokens: int
    tau_depth: int
    tau_hidden_dim: int

    def __post_init__(self):
        if self.conditioning not in ("class_embedding", "cross_attention"):
            raise ValueError(
                f"train_cartoon.model.conditioning must be class_embedding or cross_attention, "
                f"got {self.conditioning!r}"
            )


@dataclass(frozen=True)
class TrainCartoonConfig(StageConfig):
    num_processes: int
    data: CartoonDataConfig
    model: CartoonModelConfig
    training: TrainConfig
    samples: GuidedSamplesConfig


@dataclass(frozen=True)
class ClassifierConfig(StageConfig):
    resolution: int
    channels: list[int]
    hidden_dim: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
