"""The GPU-worker path end to end, on loopback: one Prefect server, a process work pool,
`prefect deploy --all` of prefect.yaml and a worker process, shared by the tests of this module, on a
tiny project (bare git origin, folder DVC remote; tests/helpers/worker_project.py makes it), driven the user's
way, with `python -m flows.submit`: its refusals, a plain run brought home as its results branch, an
experiment on a commit whose data was never pushed, a failing stage,
and Ctrl-C. Four worker runs, each a few seconds of work but about 20 s of CPU (a flow-run process,
about ten dvc calls, the server's side): keep their number down. Every process started here is
stopped at the end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.local_server import _free_port as free_port
from flows.local_server import _wait_healthy as wait_healthy
from tests.helpers.worker_project import GIT, dvc, git, make_origin

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IDLE_SERVICES = [
    "CANCELLATION_CLEANUP",
    "EVENT_PERSISTER",
    "FOREMAN",
    "LATE_RUNS",
    "SCHEDULER",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "CLEANUP_RECONCILER",
    "TRIGGERS",
    "DB_VACUUM",
]


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
    proc = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


class Loopback:
    """The shared set-up: where things are, and the user's commands against it."""

    def __init__(self, root: Path, env: dict, origin: Path):
        self.root, self.env, self.origin = root, env, origin
        self.logs = root / "logs"

    def worker_log(self) -> str:
        return (self.logs / "worker.log").read_text()[-5000:]

    def clone(self, name: str) -> Path:
        """A user's fresh clone of the origin."""
        user = self.root / name
        subprocess.run(["git", "clone", "-q", str(self.origin), str(user)], check=True)
        return user

    def submit_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "flows.submit", *args]

    def submit_env(self) -> dict:
        # The user's own identity for git, and this checkout's code for flows.submit.
        return {
            **self.env,
            "PYTHONPATH": str(REPO),
            "GIT_AUTHOR_NAME": "u",
            "GIT_AUTHOR_EMAIL": "u@u",
            "GIT_COMMITTER_NAME": "u",
            "GIT_COMMITTER_EMAIL": "u@u",
        }

    def submit(self, user: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.submit_cmd(*args), cwd=user, env=self.submit_env(), capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loopback")
    origin, _ = make_origin(root / "remote")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        PREFECT_HOME=str(root / "prefect"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
        FACEDIFF_HOME=str(REPO),
        FACEDIFF_REPO_URL=str(origin),
        FACEDIFF_WORKDIR=str(root / "worker"),
        MAKE_PID_FILE=str(root / "make.pid"),  # the slow stage says where it runs (Ctrl-C test)
        PREFECT_WORKER_QUERY_SECONDS="2",
    )  # a run waits up to 10 s for the worker otherwise
    # The server's background services that these tests never need, off: on 2 cores they cost
    # about 0.1 s of CPU a second, and more during a run (scheduling, late runs, automations, ...).
    env.update(
        {f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in IDLE_SERVICES}, PREFECT_UI_ENABLED="false"
    )
    lb = Loopback(root, env, origin)
    lb.logs.mkdir()
    started = []
    try:
        with open(lb.logs / "server.log", "w") as log:
            server = subprocess.Popen(
                [
                    str(BIN / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    url.split(":")[2].split("/")[0],
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(server)
        wait_healthy(url, server)
        prefect(env, "work-pool", "create", "gpu", "--type", "process")
        with open(lb.logs / "worker.log", "w") as log:  # starting while the deployments are made
            started.append(
                subprocess.Popen(
                    [str(BIN / "prefect"), "worker", "start", "--pool", "gpu", "--limit", "1"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        prefect(env, "--no-prompt", "deploy", "--all")
        yield lb
    finally:
        for proc in reversed(started):
            stop(proc)


def commit(user: Path, message: str, n: int | None = None) -> str:
    if n is not None:
        (user / "params.yaml").write_text(f"make:\n  n: {n}\n")
    subprocess.run([*GIT, "commit", "-qam", message], cwd=user, check=True)
    return git(user, "rev-parse", "HEAD")


def test_submit_refuses_what_the_worker_cannot_run_then_brings_a_plain_run_home(loop):
    user = loop.clone("user-plain")
    (user / "params.yaml").write_text("make:\n  n: 5\n")
    refused = loop.submit(user, "make")
    assert refused.returncode == 2 and "git add -A && git commit" in refused.stderr, refused.stderr
    sha = commit(user, "five")
    refused = loop.submit(user, "make")
    assert refused.returncode == 2 and "is not on origin" in refused.stderr, refused.stderr
    assert "git push origin main" in refused.stderr, refused.stderr
    git(user, "push", "-q", "origin", "main")

    done = loop.submit(user, "make")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr + loop.worker_log()
    assert f"of {sha[:12]}: http://127.0.0.1:" in out, out  # the flow run's address
    assert "Running stage 'make'" in out, out  # the worker's log, as it came
    assert re.search(r"==> stage make: running.*\n(.*\n)*==> stage make: done after \d+ s", out), out
    assert "==> flow run" in out and ": Completed" in out, out
    branch = re.search(r"results branch (results/\S+):", out).group(1)
    assert git(user, "branch", "--show-current") == branch and git(user, "rev-parse", "HEAD~1") == sha
    assert (user / "data/out.txt").read_text() == "xxxxx"  # dvc pull ran
    assert re.search(r"metrics/make\.json\s+size\s+-\s+5", out), out  # dvc metrics diff against sha
    assert "  data/preview.png\n" in out and "  eval/grids/grid.png\n" in out, out


def test_submit_an_experiment_on_a_commit_whose_data_was_never_pushed(loop):
    user = loop.clone("user-exp")
    commit(user, "seven", n=7)
    dvc(user, "repro")  # the user ran it ...
    subprocess.run([*GIT, "add", "-A"], cwd=user, check=True)
    sha = commit(user, "results of seven")  # ... and committed dvc.lock, but no `dvc push`
    git(user, "push", "-q", "origin", "main")

    done = loop.submit(user, "-q", "-S", "make.n=8", "make")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr + loop.worker_log()
    assert "Running stage" not in out and "==> stage make: running" in out, out  # -q: no log lines
    assert "the DVC remote lacked" in out and "data/out.txt" in out, out  # the forgotten push, named
    name = re.search(r"==> experiment (\S+): pulled", out).group(1)
    assert re.search(r"metrics/make\.json\s+size\s+7\s+8\s+1", out), out  # against the commit sent
    grid = user / ".dvc/tmp/submit" / name / "data/preview.png"  # a DVC-cached grid, from the experiment
    assert f"  {grid.relative_to(user)}\n" in out and grid.is_file(), out
    assert git(user, "rev-parse", "HEAD") == sha and not git(user, "status", "--porcelain")


def test_submit_of_a_failing_stage_says_which_and_why(loop):
    user = loop.clone("user-fail")
    done = loop.submit(user, "-q", "-S", "make.n=-1", "make")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED (Failed): stage make failed: ValueError: make.n must be >= 0, got -1" in done.stdout, done.stdout
    assert re.search(r"flow run: http://127\.0\.0\.1:\d+/\S+", done.stdout), done.stdout


def test_ctrl_c_cancels_the_flow_run_and_its_stage(loop):
    user = loop.clone("user-cancel")
    # SIGINT as a terminal would deliver it: a suite started in the background (`make test &` from a
    # script) runs with SIGINT ignored, which every child inherits, and Python keeps it ignored.
    proc = subprocess.Popen(
        loop.submit_cmd("-q", "-S", "+make.sleep=120", "make"),
        cwd=user,
        env=loop.submit_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    pid_file, seen = Path(loop.env["MAKE_PID_FILE"]), []
    try:
        for line in proc.stdout:  # wait until the stage runs (and sleeps) on the worker
            seen.append(line)
            if "==> stage make: running" in line:
                break
        deadline = time.monotonic() + 30
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.is_file(), "".join(seen) + loop.worker_log()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "==> Ctrl-C: cancelling flow run" in out and ": Cancelled" in out, out
    stage = int(pid_file.read_text())
    assert not Path(f"/proc/{stage}").exists() or "\nState:\tZ" in Path(f"/proc/{stage}/status").read_text()
