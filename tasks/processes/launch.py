"""Running a stage's work in several processes with `accelerate launch`.

A stage with `num_processes > 1` writes its keyword arguments to a job file and re-runs its own
module under `accelerate launch`; each process reads the job and finds its rank from accelerate.
On a machine without GPUs accelerate falls back to CPU processes (gloo), which is how the
multi-process path can be tried on a laptop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.reporting.log import get_logger
from tasks.shards.dataset import write_json_atomic


def launch(
    module: str, job: str | Path, kwargs: dict[str, Any], num_processes: int, mixed_precision: str = "no"
) -> None:
    """Run `python -m <module> --job <job>` in `num_processes` processes; raise if any fails."""
    job = Path(job)
    job.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job, kwargs)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines",
        "1",
        "--mixed_precision",
        mixed_precision,
        "--dynamo_backend",
        "no",
        "--num_processes",
        str(num_processes),
        "-m",
        module,
        "--job",
        str(job),
    ]
    get_logger().info("launching: %s", " ".join(cmd))
    try:
        subprocess.run(cmd, check=True)
    finally:
        job.unlink(missing_ok=True)


def run_or_launch(module: str, run: Callable[..., Any], paths: dict[str, str], config, job: str | Path) -> Any:
    """`run(**paths, config=config)` here, or in `config.num_processes` processes of `module` under
    `accelerate launch` (then None: the processes write the outputs). `config` is a stage config
    with `num_processes` and `training.mixed_precision`; it travels in the job file as a dict."""
    if config.num_processes > 1:
        launch(
            module, job, {**paths, "config": config.to_dict()}, config.num_processes, config.training.mixed_precision
        )
        return None
    summary = run(**paths, config=config)
    get_logger().info(
        f"{module}: {summary['steps']} steps; final loss {summary['final_loss']}; "
        f"{summary['run']['samples_per_second'] or 0:.1f} samples/s"
    )
    return summary


def config_job_main(run: Callable[..., Any], config_cls, stage: str) -> None:
    """The `__main__` of a process launched by `run_or_launch`: rebuild the typed config, then run."""
    job_main(
        lambda config, **paths: run(**paths, config=config_cls.from_params(config, stage)),
        f"one process of stage {stage}",
    )


def job_main(run: Callable[..., Any], description: str) -> None:
    """The `__main__` of a launched process: call `run` with the job file's keyword arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job", required=True)
    args = parser.parse_args()
    run(**json.loads(Path(args.job).read_text()))
