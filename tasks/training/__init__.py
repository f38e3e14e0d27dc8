"""The shared diffusion training engine (accelerate, AdamW + cosine warmup, EMA, exact resume, dvclive)."""
from tasks.training.config import TrainConfig
from tasks.training.engine import StopTraining, TrainSpec, fingerprint, list_checkpoints, noise_seed, train
from tasks.training.memory import measured_adam_state_mb, memory_anatomy

__all__ = ["TrainConfig", "TrainSpec", "StopTraining", "fingerprint", "list_checkpoints", "noise_seed", "train",
           "memory_anatomy", "measured_adam_state_mb"]
