"""The README's GPU-worker path end to end, on loopback: a Prefect server, a process work pool,
`prefect deploy --all` of prefect.yaml, a worker process, deployment runs (an experiment, then a
plain run of a short SHA) on a tiny project (bare git origin, folder DVC remote), then the user's
side: `dvc exp pull` and the experiment's metrics, the results branch and `dvc pull`. Every process
started here is stopped at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.local_server import _free_port as free_port, _wait_healthy as wait_healthy
from tests.test_worker import dvc, git, make_origin, push_commit

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started here and its children (it leads its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def prefect(env: dict, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_deployment_run_on_a_worker_returns_an_experiment_the_user_pulls(tmp_path):
    origin, _ = make_origin(tmp_path / "remote")
    sha = push_commit(origin, "second", n=4)  # the run must use the newest main
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=url,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", FACEDIFF_HOME=str(REPO),
               FACEDIFF_REPO_URL=str(origin), FACEDIFF_WORKDIR=str(tmp_path / "worker"))
    logs = tmp_path / "logs"
    logs.mkdir()
    started = []
    try:
        with open(logs / "server.log", "w") as log:
            server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       url.split(":")[2].split("/")[0]], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        started.append(server)
        wait_healthy(url, server)
        prefect(env, "work-pool", "create", "gpu", "--type", "process")
        prefect(env, "--no-prompt", "deploy", "--all")
        with open(logs / "worker.log", "w") as log:
            started.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1"],
                                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        params = {"revision": "main", "targets": ["make"], "experiment": True, "set_params": ["make.n=6"]}
        out = prefect(env, "deployment", "run", "repro-on-worker/repro", "--params", json.dumps(params),
                      "--watch", "--watch-timeout", "240")
        assert "Completed" in out, out + (logs / "worker.log").read_text()[-5000:]
        artifact = json.loads(prefect(env, "artifact", "inspect", "facediff-worker-run", "--limit", "1",
                                             "--output", "json"))
        text = artifact[0]["data"] if isinstance(artifact, list) else artifact["data"]
        out = prefect(env, "deployment", "run", "repro-on-worker/repro", "--params",
                      json.dumps({"revision": sha[:9], "targets": ["make"]}), "--watch", "--watch-timeout", "240")
        assert "Completed" in out, out + (logs / "worker.log").read_text()[-5000:]
    finally:
        for proc in reversed(started):
            stop(proc)

    # The artifact describes this run: the SHA main had after the second push, the experiment, the stage.
    assert sha in text and "experiment `worker-" in text and "`make`" in text, text
    assert "| params.yaml | make.n | 4 | 6 |" in text, text
    name = text.split("experiment `")[1].split("`")[0]
    assert not (tmp_path / "worker" / "runs").exists() or not any((tmp_path / "worker" / "runs").iterdir())

    user = tmp_path / "user"
    subprocess.run(["git", "clone", "-q", str(origin), str(user)], check=True)
    assert git(user, "rev-parse", "HEAD") == sha
    assert name in dvc(user, "exp", "list", "origin")
    dvc(user, "exp", "pull", "origin", name)
    shown = json.loads(dvc(user, "exp", "show", "--json"))
    revs = [r for base in shown for e in (base.get("experiments") or []) for r in e.get("revs", [])]
    metrics = [r["data"]["metrics"]["metrics/make.json"]["data"] for r in revs if r.get("name") == name]
    assert metrics == [{"size": 6, "nested": {"half": 3.0}}]

    # The plain run (a short SHA) came back as a results branch holding dvc.lock; its data is in the remote.
    branches = git(user, "ls-remote", "origin", "refs/heads/results/*").split()
    assert len(branches) == 2 and branches[1].startswith(f"refs/heads/results/{sha[:12]}-"), branches
    git(user, "fetch", "-q", "origin", branches[1])
    git(user, "checkout", "-q", "FETCH_HEAD")
    assert git(user, "rev-parse", "HEAD~1") == sha
    dvc(user, "pull")
    assert (user / "data/out.txt").read_text() == "xxxx"
