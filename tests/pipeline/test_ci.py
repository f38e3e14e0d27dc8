"""The CI entry point shows every skip and fails loudly when the browser check cannot run.

`.ci/run` is run on a copy with stub commands on PATH (id, apt-get, make): no install or test
run happens here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_make_test_reports_skips_with_their_reasons():
    out = subprocess.run(
        ["make", "-n", "-W", "requirements.lock", "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PY": "python3"},
    )
    assert out.returncode == 0, out.stderr
    pytest_lines = [line for line in out.stdout.splitlines() if "-m pytest" in line]
    assert len(pytest_lines) == 1 and "-rs" in pytest_lines[0].split(), out.stdout


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def _ci(tmp_path, install_ok: bool, extra_env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    work = tmp_path / "clone"
    (work / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", work / ".ci" / "run")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("dirname", "cat"):
        os.symlink(shutil.which(tool), stubs / tool)
    _stub(stubs, "id", "echo 0")
    _stub(stubs, "make", f'echo "make $*" >> {calls}')
    _stub(
        stubs,
        "apt-get",
        f'echo "apt-get $*" >> {calls}\nif [ "$1" = install ]; then exit {0 if install_ok else 100}; fi',
    )
    env = {"PATH": str(stubs), "HOME": str(tmp_path), **(extra_env or {})}
    proc = subprocess.run(
        [shutil.which("bash"), str(work / ".ci" / "run")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, calls.read_text().splitlines() if calls.exists() else []


def test_ci_updates_apt_before_installing_chromium_then_runs_the_tests(tmp_path):
    proc, calls = _ci(tmp_path, install_ok=True)
    assert proc.returncode == 0, proc.stderr
    assert [c.split()[:2] for c in calls] == [
        ["apt-get", "update"],
        ["apt-get", "install"],
        ["make", "test"],
        ["make", "test-scale"],
    ]
    assert "chromium" in calls[1]


def test_ci_fails_loudly_when_chromium_cannot_be_installed(tmp_path):
    proc, calls = _ci(tmp_path, install_ok=False)
    assert proc.returncode != 0
    assert "chromium" in proc.stderr and "browser check" in proc.stderr
    assert not any(c.startswith("make") for c in calls)  # no test run that would silently skip it


@pytest.mark.parametrize("setting", ["off"])
def test_ci_can_be_told_to_leave_chromium_alone(tmp_path, setting):
    proc, calls = _ci(tmp_path, install_ok=False, extra_env={"BROWSER_CHECK": setting})
    assert proc.returncode == 0, proc.stderr
    assert calls == ["make test", "make test-scale"]
