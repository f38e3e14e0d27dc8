"""A tiny DVC project for the worker tests, made for real in seconds: a bare git origin and a folder
DVC remote. Its one stage (`python make.py`) writes cached outputs (one of them an image), a metrics
file and a PNG grid kept in git; `make.n < 0` makes it fail, `make.sleep` makes it slow (for
cancellation)."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
BIN = Path(sys.executable).parent

STAGE = textwrap.dedent("""\
    import json, os, pathlib, sys, time, yaml
    from PIL import Image
    params = yaml.safe_load(open("params.yaml"))["make"]
    n = params["n"]
    if n < 0:
        raise ValueError(f"make.n must be >= 0, got {n}")
    if params.get("sleep"):
        pathlib.Path(os.environ.get("MAKE_PID_FILE", "make.pid")).write_text(str(os.getpid()))
        time.sleep(params["sleep"])
    pathlib.Path("data").mkdir(exist_ok=True)
    pathlib.Path("data/out.txt").write_text("x" * n)
    Image.new("RGB", (4, 4), (0, n * 20 % 256, 0)).save("data/preview.png")
    pathlib.Path("metrics").mkdir(exist_ok=True)
    json.dump({"size": n, "nested": {"half": n / 2}}, open("metrics/make.json", "w"))
    pathlib.Path("eval/grids").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (n * 20 % 256, 0, 0)).save("eval/grids/grid.png")
""")

DVC_YAML = textwrap.dedent("""\
    stages:
      make:
        cmd: python make.py
        deps: [make.py]
        params: [make]
        outs: [data/out.txt, data/preview.png]   # the PNG: a DVC-cached (git-ignored) image
        metrics:
          - metrics/make.json:
              cache: false
        plots:
          - eval/grids:
              cache: false
""")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**results_env(), "PATH": f"{BIN}:/usr/bin:/bin"},
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def results_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}


@functools.lru_cache(maxsize=1)
def seed_project() -> Path:
    """A working copy of the tiny project (dvc init, remote added), made once: dvc calls are slow."""
    home = tempfile.mkdtemp(prefix="worker-seed-")
    atexit.register(shutil.rmtree, home, True)
    seed = Path(home) / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    (seed / "make.py").write_text(STAGE)
    (seed / "dvc.yaml").write_text(DVC_YAML)
    (seed / "requirements.lock").write_text(f"pyyaml=={metadata.version('pyyaml')}\n")
    dvc(seed, "init", "-q")
    dvc(seed, "config", "core.analytics", "false")  # else each dvc call starts a daemon that needs the network
    dvc(seed, "remote", "add", "-d", "store", "unset")  # each copy points it at its own storage
    return seed


def make_origin(root: Path, name: str = "proj", n: int = 3) -> tuple[Path, Path]:
    """(bare origin, DVC storage folder) of a tiny DVC project whose main branch has one commit."""
    origin, seed, storage = root / f"{name}.git", root / f"{name}-seed", root / f"{name}-storage"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    shutil.copytree(seed_project(), seed)
    dvc(seed, "remote", "modify", "store", "url", str(storage))
    (seed / "params.yaml").write_text(f"make:\n  n: {n}\n")
    git(seed, "add", "-A")
    git(seed, "commit", "-qm", "tiny project")
    git(seed, "remote", "add", "origin", str(origin))
    git(seed, "push", "-q", "origin", "main")
    return origin, storage


def push_commit(origin: Path, message: str, n: int) -> str:
    """A new commit on origin's main (params changed), as another user's push; returns its SHA."""
    clone = origin.parent / f"push-{message}"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    (clone / "params.yaml").write_text(f"make:\n  n: {n}\n")
    git(clone, "commit", "-qam", message)
    git(clone, "push", "-q", "origin", "main")
    return git(clone, "rev-parse", "HEAD")
