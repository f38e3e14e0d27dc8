"""The shared diffusion training engine (accelerate, AdamW + cosine warmup, EMA, exact resume, dvclive).

The names below load on first use (PEP 562), so importing `tasks.training.config` (as every stage
config module does, for TrainConfig) does not run the engine module: a data stage then neither
imports accelerate nor depends, in dvc.yaml, on the engine's code.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["TrainConfig", "TrainSpec", "StopTraining", "fingerprint", "list_checkpoints", "noise_seed", "train",
           "memory_anatomy", "measured_adam_state_mb"]


def __getattr__(name: str) -> Any:
    # The module of each name, spelled out so tasks/common/codeprint.py sees the dependency.
    where = {"TrainConfig": "tasks.training.config", "memory_anatomy": "tasks.training.memory",
             "measured_adam_state_mb": "tasks.training.memory"}
    if name in __all__:
        return getattr(import_module(where.get(name, "tasks.training.engine")), name)
    raise AttributeError(f"module 'tasks.training' has no attribute {name!r}")
