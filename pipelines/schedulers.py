"""Sampling schedulers by short name, built from a model's training noise schedule."""
from __future__ import annotations

from typing import Any, Mapping

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SCHEDULERS = {
    "ddpm": DDPMScheduler,  # ancestral, as trained: needs ~all training steps
    "ddim": DDIMScheduler,  # deterministic (eta=0), good at 20-50 steps
    "dpm": DPMSolverMultistepScheduler,  # DPM-Solver++ (2M), good at 15-25 steps
}


def make_scheduler(name: str, config: Mapping[str, Any]):
    """A sampling scheduler of kind `name` (ddpm | ddim | dpm) with the training noise schedule:
    `pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)`."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(config)
