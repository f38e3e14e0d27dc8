"""A stage killed with SIGKILL leaves no Prefect server behind (flows/local_server.stage_server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.e2e import REPO, _env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

SCRIPT = """
import sys, time
from flows.local_server import stage_server
with stage_server() as server:
    print(server.pid, flush=True)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def test_kill_9_of_a_stage_takes_its_server_along(tmp_path):
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    stage = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(stage.stdout.readline())
        assert _alive(server_pid)
        os.kill(stage.pid, signal.SIGKILL)
        stage.wait()
        deadline = time.monotonic() + 15
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server_pid), f"prefect server {server_pid} outlived its stage"
    finally:
        if stage.poll() is None:
            stage.kill()


def test_a_failing_stage_says_why_in_one_line_without_tracebacks(tmp_path):
    from tests.helpers.e2e import copy_repo

    repo = copy_repo(tmp_path / "repo", {"fetch_cartoons": {"source": "folder", "folder": "no/such/folder"}})
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.fetch_cartoons", "--out-dir", "out"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("stage fetch_cartoons failed: FileNotFoundError: fetch_cartoons.folder 'no/such/folder'"), (
        last
    )
    saved = repo / ".dvc/tmp/fetch_cartoons.traceback.txt"
    assert f"(traceback in {saved.relative_to(repo)})" in last and "Traceback" in saved.read_text()
