"""Running a stage's flow from `dvc repro`: `python -m flows.<stage>` reads its params section."""
from __future__ import annotations

import sys
from typing import Callable

from tasks.params import stage_params


def run_stage(flow: Callable, stage: str) -> None:
    """Call `flow` with the `stage` section of params.yaml as keyword arguments.

    Exits non-zero with a one-line message on failure, so `dvc repro` shows why the stage failed
    and records nothing for it.
    """
    params = stage_params(stage)
    state = flow(**params, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # the flow's own error, already logged with its traceback
            sys.exit(f"stage {stage} failed: {type(exc).__name__}: {exc}")
        sys.exit(f"stage {stage} failed: {state.name}")
