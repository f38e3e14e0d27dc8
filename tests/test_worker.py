"""The GPU worker's steps on a local 'remote' repo: checkout, repro, push to a DVC remote, pull elsewhere."""
import subprocess

import pytest

from flows.worker import metrics_markdown
from tasks.worker import CommandFailed, checkout, collect_metrics, pull, push, reproduce, run
from tests.e2e import copy_repo

pytestmark = pytest.mark.slow


def test_worker_steps_share_results_through_the_dvc_remote(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    origin = copy_repo(tmp_path / "origin", {"fetch_cartoons": {"num_images": 3, "workers": 1}})
    storage = tmp_path / "dvc-storage"
    run(["dvc", "remote", "add", "-d", "store", str(storage)], origin)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "remote"],
                   cwd=origin, check=True)
    revision = run(["git", "rev-parse", "HEAD"], origin).strip()

    first = checkout.fn(str(origin), revision, str(tmp_path / "worker1"))
    assert pull.fn(first)  # remote configured, nothing there yet: allowed
    reproduce.fn(first, ["fetch_cartoons"], None, [], False)
    assert len(list((tmp_path / "worker1/origin/data/cartoons/raw").glob("cs*.png"))) == 3
    assert push.fn(first) and any(storage.rglob("*"))
    assert isinstance(collect_metrics.fn(first), dict)

    second = checkout.fn(str(origin), revision, str(tmp_path / "worker2"))
    # dvc.lock is not committed in origin; the worker that ran it has it: copy it as a commit would.
    (tmp_path / "worker2/origin/dvc.lock").write_text((tmp_path / "worker1/origin/dvc.lock").read_text())
    pull.fn(second)
    assert len(list((tmp_path / "worker2/origin/data/cartoons/raw").glob("cs*.png"))) == 3
    assert "didn't change" in reproduce.fn(second, ["fetch_cartoons"], None, [], False)


def test_failures_name_the_command(tmp_path):
    with pytest.raises(CommandFailed, match="git clone --quiet .*nope"):
        checkout.fn(str(tmp_path / "nope"), "main", str(tmp_path / "w"))
    with pytest.raises(ValueError, match="needs experiment=True"):
        reproduce.fn(str(tmp_path), [], None, ["a.b=1"], False)


def test_metrics_markdown_lists_every_value():
    md = metrics_markdown("abc123", {"metrics/eval.json": {"acc": 0.9, "per": {"hair": 0.8}}})
    assert "| metrics/eval.json | acc | 0.9 |" in md and '{"hair": 0.8}' in md and "`abc123`" in md
