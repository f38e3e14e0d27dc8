"""Running a stage's flow from `dvc repro`.

`python -m flows.<stage> --raw-dir data/x --out-dir data/y` calls the stage's flow with its section
of params.yaml plus the paths given on the command line (dvc.yaml is the one place paths live).
"""
from __future__ import annotations

import sys
from typing import Callable

from tasks.common.params import stage_params


def parse_path_args(argv: list[str]) -> dict[str, str]:
    """`--out-dir data/y` pairs -> {"out_dir": "data/y"}."""
    if len(argv) % 2 or any(not a.startswith("--") for a in argv[::2]):
        raise SystemExit(f"expected --name value pairs, got {argv}")
    return {k[2:].replace("-", "_"): v for k, v in zip(argv[::2], argv[1::2])}


def run_stage(flow: Callable, stage: str, argv: list[str] | None = None) -> None:
    """Run `flow` with params.yaml's `stage` section and the command line's paths.

    Exits non-zero with a one-line message on failure, so `dvc repro` shows why the stage failed
    and records nothing for it.
    """
    kwargs = {**stage_params(stage), **parse_path_args(sys.argv[1:] if argv is None else argv)}
    state = flow(**kwargs, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # the flow's own error, already logged with its traceback
            sys.exit(f"stage {stage} failed: {type(exc).__name__}: {exc}")
        sys.exit(f"stage {stage} failed: {state.name}")
