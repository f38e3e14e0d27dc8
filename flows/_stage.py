"""Running a stage's flow from `dvc repro`.

`python -m flows.<stage> --raw-dir data/x --out-dir data/y` calls the stage's flow with the paths
given on the command line (dvc.yaml is the one place paths live) and `params=` its section of
params.yaml (the one place values live); the flow reads that section into its typed config.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from prefect import tags, task
from prefect.cache_policies import NO_CACHE

from flows.local_server import stage_server
from tasks.config.params import stage_params
from tasks.tracking.identity import REPO, STAGE_ENV, loaded_project_files

# Where run_stage appends, when set, the project files the stage process loaded (tests/pipeline/test_deps.py).
LOADED_LOG_ENV = "FACEDIFF_LOADED_LOG"


def stage_task(name: str, **options):
    """The Prefect task that runs stage `name`'s work. No caching by Prefect: DVC decides what is
    stale, and resumption inside a stage is by identities on disk (tasks/tracking/identity.py)."""
    return task(name=name, cache_policy=NO_CACHE, **options)


def parse_path_args(argv: list[str]) -> dict[str, str]:
    """`--out-dir data/y` pairs -> {"out_dir": "data/y"}."""
    if len(argv) % 2 or any(not a.startswith("--") for a in argv[::2]):
        raise SystemExit(f"expected --name value pairs, got {argv}")
    return {k[2:].replace("-", "_"): v for k, v in zip(argv[::2], argv[1::2])}


class _NoConsoleTraceback(logging.Filter):
    """Keeps Prefect's console lines one line each: a failure's reason without 70 lines of traceback
    (the traceback still reaches the Prefect server's logs, and run_stage writes it to a file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def _quiet_console_tracebacks() -> None:
    if os.environ.get("FACEDIFF_TRACEBACKS") == "1":  # for debugging: Prefect's full console output
        return
    from prefect.logging.configuration import setup_logging

    setup_logging()  # Prefect configures its handlers lazily; do it now to reach its console handler
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_NoConsoleTraceback())


def _save_traceback(stage: str, exc: BaseException) -> Path:
    folder = Path(".dvc/tmp") if Path(".dvc").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}.traceback.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def _log_loaded_files(stage: str) -> None:
    if log := os.environ.get(LOADED_LOG_ENV):
        files = [p.relative_to(REPO).as_posix() for p in loaded_project_files()]
        with open(log, "a") as f:
            f.write(json.dumps({"stage": stage, "files": files}) + "\n")


def _since_process_start() -> float:
    """Seconds since this process started: the interpreter's start-up and the stage's imports."""
    import psutil

    return time.time() - psutil.Process().create_time()


def run_stage(flow: Callable, stage: str, argv: list[str] | None = None) -> None:
    """Run `flow(**paths, params=<params.yaml's stage section>)` with the command line's paths.

    Exits non-zero with a one-line message on failure, so `dvc repro` shows why the stage failed
    and records nothing for it. On success the last line says where the stage's time went.
    """
    startup = _since_process_start()
    os.environ[STAGE_ENV] = stage  # the code identity of what this process (and any it launches) reuses
    paths = parse_path_args(sys.argv[1:] if argv is None else argv)
    # A stage started by the GPU worker's `dvc repro` is tagged with the worker's flow run id, so the
    # UI lists a worker run's stage runs (filter by tag); tasks/worker/commands.py sets the variable.
    worker_run = os.environ.get("FACEDIFF_WORKER_RUN_ID")
    _quiet_console_tracebacks()
    # No PREFECT_API_URL: a server that dies with this process, not Prefect's own temporary one,
    # which would outlive a `kill -9` of the stage (flows/local_server.py).
    t0 = time.perf_counter()
    with stage_server(), tags(*([f"worker-run:{worker_run}"] if worker_run else [])):
        t1 = time.perf_counter()
        state = flow(**paths, params=stage_params(stage), return_state=True)
        t2 = time.perf_counter()
    _log_loaded_files(stage)
    if not state.is_completed():
        try:
            state.result()
        except Exception as exc:  # the flow's own error: its reason last, the traceback in a file
            where = _save_traceback(stage, exc)
            sys.exit(f"stage {stage} failed: {type(exc).__name__}: {exc} (traceback in {where})")
        sys.exit(f"stage {stage} failed: {state.name}")
    print(
        f"stage {stage}: {startup + time.perf_counter() - t0:.1f} s = {startup:.1f} s start-up and imports, "
        f"{t1 - t0:.1f} s Prefect server, {t2 - t1:.1f} s flow run (the work and about 1 s of Prefect), "
        f"{time.perf_counter() - t2:.1f} s closing the server",
        flush=True,
    )
