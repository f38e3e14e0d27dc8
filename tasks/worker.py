"""What a GPU worker does for a flow run: check out a revision, pull, repro, push, report.

Each step is a subprocess of git or dvc in the checkout, so the worker runs exactly what a user
runs by hand, and DVC (not Prefect) decides what is stale.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.log import get_logger


class CommandFailed(RuntimeError):
    pass


def run(cmd: list[str], cwd: str | Path | None = None) -> str:
    """Run `cmd`, logging it; raise CommandFailed with the tail of its output on failure."""
    get_logger().info("$ %s", " ".join(cmd))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise CommandFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=20)
def checkout(repo_url: str, revision: str, workdir: str) -> str:
    """A clone of `repo_url` at `revision` in `workdir/<repo name>` (fetched again if present)."""
    dest = Path(workdir).expanduser() / Path(repo_url.rstrip("/")).name.removesuffix(".git")
    if not (dest / ".git").is_dir():
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        run(["git", "clone", "--quiet", repo_url, str(dest)])
    run(["git", "fetch", "--quiet", "origin"], dest)
    run(["git", "checkout", "--quiet", "--force", revision], dest)
    return str(dest)


def has_remote(repo: str) -> bool:
    return bool(run(["dvc", "remote", "list"], repo).strip())


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def pull(repo: str) -> bool:
    """Fetch cached outputs from the DVC remote, if one is configured; missing ones are rebuilt."""
    if not has_remote(repo):
        get_logger().warning("no DVC remote configured: every stage runs from scratch")
        return False
    run(["dvc", "pull", "--allow-missing"], repo)
    return True


@task(cache_policy=NO_CACHE)
def reproduce(repo: str, targets: list[str], profile: str | None, set_params: list[str],
              experiment: bool) -> str:
    """`dvc repro` (or `dvc exp run`, recorded as an experiment) after applying a profile."""
    if profile:
        run([sys.executable, "-m", "tasks.common.params", "apply", profile], repo)
    if experiment:
        cmd = ["dvc", "exp", "run", *[a for p in set_params for a in ("-S", p)], *targets]
    else:
        if set_params:
            raise ValueError("set_params needs experiment=True (plain repro reads params.yaml as committed)")
        cmd = ["dvc", "repro", *targets]
    return run(cmd, repo)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def push(repo: str) -> bool:
    if not has_remote(repo):
        return False
    run(["dvc", "push"], repo)
    return True


@task(cache_policy=NO_CACHE)
def collect_metrics(repo: str) -> dict:
    """Every metric DVC knows for the workspace, as {file: {name: value}}."""
    out = run(["dvc", "metrics", "show", "--json"], repo)
    data = json.loads(out or "{}")
    metrics = {}
    for _, entry in data.items():  # {"workspace": {"data": {file: {"data": {...}}}}}
        for path, content in (entry.get("data") or {}).items():
            metrics[path] = content.get("data", content)
    return metrics
