"""Running git and dvc for the worker: output streamed to the run's log, failures classified.

Every step of a worker run is a git or dvc subprocess in the run's own checkout, so the worker
runs exactly what a user runs by hand, and DVC (not Prefect) decides what is stale. Each output
line goes to the Prefect run logger as it comes, so a long `dvc repro` is followed live in the UI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from tasks.reporting.log import get_logger

# Set in every subprocess so the stage flows that `dvc repro` starts can tag their runs with the
# worker run that started them (flows/_stage.py reads it).
WORKER_RUN_ENV = "FACEDIFF_WORKER_RUN_ID"

# Output that says the network or the remote failed, not the request: only these are worth a retry.
TRANSIENT = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|timed out|temporary failure"
    r"|network is unreachable|remote end hung up|early eof|rpc failed|http 5\d\d"
    r"|returned error: (5\d\d|429)|unable to connect|too many requests|broken pipe",
    re.IGNORECASE,
)


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message names it and ends with its last output lines."""

    def __init__(self, cmd: list[str], returncode: int, tail: str):
        self.cmd, self.returncode, self.tail = cmd, returncode, tail
        super().__init__(f"{' '.join(cmd)} exited {returncode}:\n{tail}")


class TransientError(CommandFailed):
    """A failure of the network or a remote (git host, DVC storage): retrying may help."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment for git/dvc: its venv first on PATH, no flow-run id leaking in.

    A process work pool starts the flow with PREFECT__FLOW_RUN_ID set; a stage flow must not see
    it (it would claim to be the worker's run), so it is replaced by WORKER_RUN_ENV.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    from prefect import runtime  # here, not at import: the module is usable without a run

    if runtime.flow_run.id:
        env[WORKER_RUN_ENV] = str(runtime.flow_run.id)
    env.update(extra or {})
    return env


def run(cmd: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None, tail_lines: int = 40) -> str:
    """Run `cmd`, logging each output line as it comes; return its whole output (stdout + stderr).

    Raises TransientError when the output reads like a network/remote failure, else CommandFailed.
    """
    log = get_logger()
    log.info("$ %s%s", " ".join(cmd), f"   (in {cwd})" if cwd else "")
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=tail_lines)
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env or child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            tail.append(line)
            if line.strip():
                log.info("  %s", line)
    if proc.returncode:
        text = "\n".join(tail)
        error = TransientError if TRANSIENT.search(text) else CommandFailed
        raise error(cmd, proc.returncode, text)
    return "\n".join(lines)


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry network/remote failures only, saying why."""
    # Read the exception without raising it: a raise here would add this frame to its traceback.
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, TransientError):
        get_logger().warning(
            "retrying %s: the network or remote failed (%s)",
            task.name,
            exc.tail.splitlines()[-1] if exc.tail else exc.returncode,
        )
        return True
    get_logger().info("not retrying %s: %s is not a network failure", task.name, type(exc).__name__)
    return False
