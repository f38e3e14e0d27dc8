"""Helpers for end-to-end tests: a throwaway copy of the repo where `dvc repro` runs for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# A params overlay: the cartoon chain (fetch, preprocess, train) tiny: 40 images, 2 epochs at 16 px.
TINY_CARTOON_CHAIN = {
    "fetch_cartoons": {"num_images": 40},
    "preprocess_cartoons": {"shard_size": 20},
    "train_cartoon": {
        "data": {"batch_size": 8, "resolution": 16},
        "model": {"block_out_channels": [16, 32], "norm_num_groups": 8},
        "training": {"num_epochs": 2, "samples_every_epochs": 4, "lr_warmup_steps": 1, "checkpointing_steps": 100},
        "samples": {"num_images": 2, "num_inference_steps": 2},
    },
}


def _env() -> dict:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
        "PYTHONUNBUFFERED": "1",
    }


def copy_repo(dst: Path, overlay: dict | None = None) -> Path:
    """Copy the project's files (tracked and new, not ignored) to `dst` as a fresh git repo.

    `overlay` is merged into the copy's params.yaml (nested sections merge), e.g. to shrink data.
    """
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    if overlay:
        apply_params(dst, overlay)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dst, check=True)
    subprocess.run(git + ["commit", "-qm", "copy"], cwd=dst, check=True)
    return dst


def apply_params(repo: Path, overlay: dict | str | Path) -> None:
    """`python -m tasks.config.params apply` in `repo`: a profile file, or a dict merged as one."""
    if not isinstance(overlay, dict):
        subprocess.run(
            [sys.executable, "-m", "tasks.config.params", "apply", str(overlay)],
            cwd=repo,
            env=_env(),
            check=True,
            capture_output=True,
        )
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(overlay, f)
    try:
        apply_params(repo, f.name)
    finally:
        os.unlink(f.name)


def dvc(repo: Path, *args: str, server: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    """Run `dvc args...` in `repo` (with one shared Prefect server when `server`)."""
    cmd = [str(BIN / "dvc"), *args]
    if server:
        cmd = [sys.executable, "-m", "flows.local_server", *cmd]
    env = {**_env(), "PREFECT_HOME": str(repo / ".prefect")}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def repro(repo: Path, *stages: str) -> subprocess.CompletedProcess:
    return dvc(repo, "repro", *stages, server=True)


def assert_up_to_date(repo: Path, *stages: str) -> None:
    """Nothing reruns: `dvc status` reports the named stages and their upstream (or all) unchanged."""
    out = dvc(repo, "status", *(("--with-deps", *stages) if stages else ())).stdout
    assert "up to date" in out or out.strip() == "", out
