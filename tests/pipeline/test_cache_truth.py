"""End to end, in a copy of the repo: the cache never serves what the code did not make.

- a finished training stage re-run with `dvc repro -f` resumes at its end and writes the same
  bytes (model, sample grids, curves), although grids come every 4 epochs and it trains 2;
- a change to the training code re-runs the stage from scratch: full step count, other weights.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.helpers.e2e import TINY_CARTOON_CHAIN as TINY
from tests.helpers.e2e import _env, copy_repo, dvc, repro

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # three `dvc repro`s; minutes on a busy 2-core machine
OUTS = ("models/cartoon", "dvclive/train_cartoon")


def _digest(repo) -> dict[str, str]:
    files = {}
    for out in OUTS:
        for p in sorted((repo / out).rglob("*")):
            if p.is_file():
                files[p.relative_to(repo).as_posix()] = hashlib.md5(p.read_bytes()).hexdigest()
    return files


def _metrics(repo) -> dict:
    return json.loads((repo / "metrics/train_cartoon.json").read_text())


def test_rerun_is_identical_and_code_change_retrains(tmp_path):
    repo = copy_repo(tmp_path, TINY)
    subprocess.run(
        [sys.executable, "-m", "tasks.tracking.deps", "--write"], cwd=repo, env=_env(), check=True, capture_output=True
    )
    repro(repo, "train_cartoon")
    first, metrics = _digest(repo), _metrics(repo)
    assert "dvclive/train_cartoon/plots/images/samples/epoch-002.png" in first  # the final epoch's grid
    steps = metrics["steps"]
    assert steps >= 2 and "samples_per_second" not in metrics and "seconds" not in json.dumps(metrics)
    timings = json.loads((repo / "metrics/timings/train_cartoon.json").read_text())
    assert timings["resumed_from_step"] is None and timings["samples_per_second"] > 0

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "results"], cwd=repo, check=True)

    # `dvc repro -f`: DVC deletes the non-persistent outs; the run resumes at its end, same bytes.
    out = dvc(repo, "repro", "-f", "-s", "train_cartoon", server=True).stdout
    assert "Running stage 'train_cartoon'" in out
    assert _digest(repo) == first and _metrics(repo) == metrics
    assert json.loads((repo / "metrics/timings/train_cartoon.json").read_text())["resumed_from_step"] == steps
    assert dvc(repo, "metrics", "diff").stdout.strip() == ""

    # Other training code, same params and data: the stage is stale and trains every step afresh.
    objective = repo / "tasks/training/diffusion.py"
    text = objective.read_text()
    mse = "return F.mse_loss(pred, target)"
    assert mse in text
    objective.write_text(text.replace(mse, "return 0 * F.mse_loss(pred, target)"))  # a change that trains nothing
    assert "train_cartoon" in dvc(repo, "status", "train_cartoon").stdout
    out = repro(repo, "train_cartoon").stdout
    assert "Running stage 'train_cartoon'" in out and "Running stage 'preprocess_cartoons'" not in out
    changed = _digest(repo)
    assert _metrics(repo)["steps"] == steps
    assert json.loads((repo / "metrics/timings/train_cartoon.json").read_text())["resumed_from_step"] is None
    weights = [k for k in first if k.endswith(".safetensors")]
    assert weights and all(changed[k] != first[k] for k in weights)
