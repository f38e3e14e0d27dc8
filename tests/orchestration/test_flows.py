"""The stage entry points (`python -m flows.<stage>`) as DVC runs them, with no Prefect server set."""

import os
import subprocess
import sys

import pytest

from flows._stage import parse_path_args
from tests.helpers.e2e import copy_repo

pytestmark = pytest.mark.slow


def run_flow(repo, module, *args):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(repo / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )


def test_stage_runs_with_a_temporary_prefect_server(tmp_path):
    repo = copy_repo(tmp_path, {"fetch_cartoons": {"num_images": 4, "workers": 1}})
    proc = run_flow(repo, "flows.fetch_cartoons", "--out-dir", "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (repo / "out").glob("cs*")) == [
        f"cs{i}.{e}" for i in range(4) for e in ("csv", "png")
    ]


def test_a_failing_stage_exits_nonzero_with_the_reason(tmp_path):
    repo = copy_repo(tmp_path, {"fetch_cartoons": {"source": "folder", "folder": "no/such/folder"}})
    proc = run_flow(repo, "flows.fetch_cartoons", "--out-dir", "out")
    assert proc.returncode != 0
    assert (
        "stage fetch_cartoons failed: FileNotFoundError: fetch_cartoons.folder 'no/such/folder' is neither"
        in proc.stderr
    )


def test_path_arguments():
    assert parse_path_args(["--raw-dir", "a", "--out-dir", "b"]) == {"raw_dir": "a", "out_dir": "b"}
    with pytest.raises(SystemExit):
        parse_path_args(["--raw-dir"])
