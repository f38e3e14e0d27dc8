"""Stage configs for tests: params.yaml's section with a test's overrides merged in (nested
sections merge key by key), read into the stage's typed config exactly as its flow does."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tasks.config.params import _merge_into, load_params

REPO = Path(__file__).resolve().parents[2]


def merge(base: dict, overrides: dict) -> dict:
    """A copy of `base` with `overrides` merged in as profiles are (tasks.config.params)."""
    out = copy.deepcopy(base)
    _merge_into(out, overrides)
    return out


def section(stage: str, **overrides: Any) -> dict:
    return merge(load_params(REPO / "params.yaml")[stage], overrides)


def stage_config(cls, stage: str, **overrides: Any):
    """`cls.from_params(params.yaml[stage] + overrides, stage)`."""
    return cls.from_params(section(stage, **overrides), stage)
