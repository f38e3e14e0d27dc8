"""Run a command with one Prefect server shared by all of its stages.

With no PREFECT_API_URL, every `python -m flows.<stage>` process starts (and stops) a temporary
Prefect server of its own: about 8 s per stage on 2 cores. `python -m flows.local_server dvc repro`
starts one server for the whole command instead (about 5 s once, then about 1 s per stage) and
keeps its database under PREFECT_HOME, so the runs stay browsable with `prefect server start`.
If PREFECT_API_URL is already set, the command runs against that server unchanged.

A stage run on its own (plain `dvc repro`, no PREFECT_API_URL) gets a server from `stage_server()`
instead of Prefect's own temporary one: a child process that the kernel kills when the stage dies
(PR_SET_PDEATHSIG), so even `kill -9` of a stage leaves no server behind (Prefect's temporary
server outlives a killed parent, about 200 MB each).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout:.0f} s")


def _die_with(parent: int):
    """A preexec_fn: the child gets SIGKILL when its parent dies (Linux; elsewhere a no-op)."""

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec if sys.platform.startswith("linux") else None


def start_server(home: Path, *, die_with_parent: bool) -> tuple[subprocess.Popen, str]:
    """Start `prefect server start` on a free port (its log in PREFECT_HOME/server.log); returns it
    and its API URL once healthy."""
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    # No telemetry: it only logs DNS errors on offline machines.
    server_env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL", None)
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=server_env,
            preexec_fn=_die_with(os.getpid()) if die_with_parent else None,
        )
    try:
        _wait_healthy(url, server)
    except BaseException:
        stop_server(server)
        raise
    return server, url


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.cwd() / ".prefect")


@contextlib.contextmanager
def stage_server() -> Iterator[subprocess.Popen | None]:
    """Within: Prefect reports to PREFECT_API_URL if set, else to a server that dies with this
    process. Yields the server process it started (None when one was configured)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():  # env, profile or test harness
        yield None
        return

    server, url = start_server(_home(), die_with_parent=True)
    os.environ["PREFECT_API_URL"] = url  # for processes this one starts (accelerate launch)
    try:
        with temporary_settings({PREFECT_API_URL: url}):  # prefect read its settings at import
            try:
                yield server
            finally:
                _drain_prefect_queues()
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_server(server)


def _drain_prefect_queues() -> None:
    """Send the logs and events still queued to the server before it stops (else Prefect prints
    'Error logging to API' at exit)."""
    from prefect._internal.concurrency.services import QueueService

    try:
        QueueService.drain_all(timeout=10)
    except Exception as exc:  # nothing left to lose but log lines
        print(f"prefect: could not flush logs to the stage's server: {exc}", file=sys.stderr)


def run_with_server(cmd: list[str]) -> int:
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(cmd)
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect")))
    server, url = start_server(home, die_with_parent=True)
    try:
        return subprocess.call(cmd, env={**os.environ, "PREFECT_API_URL": url})
    finally:
        stop_server(server)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m flows.local_server COMMAND [ARGS...]")
    sys.exit(run_with_server(sys.argv[1:]))


if __name__ == "__main__":
    main()
