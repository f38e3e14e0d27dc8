"""Run a command with one Prefect server shared by all of its stages.

With no PREFECT_API_URL, every `python -m flows.<stage>` process starts (and stops) a temporary
Prefect server of its own: about 8 s per stage on 2 cores. `python -m flows.local_server dvc repro`
starts one server for the whole command instead (about 5 s once, then about 1 s per stage) and
keeps its database under PREFECT_HOME, so the runs stay browsable with `prefect server start`.
If PREFECT_API_URL is already set, the command runs against that server unchanged.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


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


def run_with_server(cmd: list[str]) -> int:
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(cmd)
    home = Path(os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect")))
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    prefect = Path(sys.executable).with_name("prefect")
    # No telemetry: it only logs DNS errors on offline machines.
    server_env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(home / "server.log", "ab") as log:
        server = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=server_env,
        )
    try:
        _wait_healthy(url, server)
        return subprocess.call(cmd, env={**os.environ, "PREFECT_API_URL": url})
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m flows.local_server COMMAND [ARGS...]")
    sys.exit(run_with_server(sys.argv[1:]))


if __name__ == "__main__":
    main()
