"""The sampler names a stage may ask for, and the sample-grid section the training stages share.

`SamplerName` lists the keys of `pipelines.schedulers.SCHEDULERS` (tests/pipeline/test_stage_configs.py
checks that they agree). It is written out here, not imported, because importing anything from
`pipelines` loads torch and diffusers (about 6 s), and the data stages that read these configs
(fetch_cartoons, preprocess_cartoons through tasks/cartoon/config.py) must stay free of both. As
a typed field it is checked like every other one (tasks/config/typed.py): an unknown name is a
one-line ConfigError at start-up, naming the key and the names allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tasks.config.typed import StageConfig

SamplerName = Literal["ddpm", "ddim", "dpm", "dpm_sde"]


@dataclass(frozen=True)
class SamplesConfig(StageConfig):
    """A training stage's sample grid (params.yaml `samples:`): drawn every few epochs and for the
    model card, with the same seed each time."""

    num_images: int
    scheduler: SamplerName
    num_inference_steps: int
    seed: int


@dataclass(frozen=True)
class GuidedSamplesConfig(SamplesConfig):
    """A sample grid of a guided model (cartoon: classifier-free; DreamBooth: class -> subject)."""

    guidance_scale: float
