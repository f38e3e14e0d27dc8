"""Does the worker's Python environment match the revision's requirements.lock?

The worker runs a revision's stages with its own venv (`python -m flows.X` imports the checkout's
code, but torch, diffusers, dvc... come from the venv). A revision that pins other versions would
run on libraries it was never tested with, so the worker compares and fails with the list.

The one allowed difference: a local version label (`torch==2.13.0` is satisfied by the CUDA build
`2.13.0+cu128`), because the lock pins the CPU build the project is tested with and a GPU worker
installs the CUDA build of the same release (docs/worker.md).
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;#]+)")


class EnvironmentMismatch(RuntimeError):
    pass


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} for every `name==version` line (comments and options skipped)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[normalise(m.group(1))] = m.group(3)
    return pins


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def mismatches(pins: dict[str, str], installed=installed_version) -> list[str]:
    """'name: locked X, installed Y' for every pin the environment does not satisfy."""
    wrong = []
    for name, want in sorted(pins.items()):
        have = installed(name)
        if have is None:
            wrong.append(f"{name}: locked {want}, not installed")
        elif have != want and have.split("+")[0] != want.split("+")[0]:
            wrong.append(f"{name}: locked {want}, installed {have}")
    return wrong


def check_lock(checkout: Path) -> int:
    """Raise EnvironmentMismatch unless the venv satisfies checkout/requirements.lock; return #pins."""
    lock = Path(checkout) / "requirements.lock"
    if not lock.is_file():
        raise EnvironmentMismatch(f"{lock} is missing: the revision does not say what it needs")
    pins = read_lock(lock)
    wrong = mismatches(pins)
    if wrong:
        shown = "\n  ".join(wrong[:30]) + (f"\n  ... and {len(wrong) - 30} more" if len(wrong) > 30 else "")
        raise EnvironmentMismatch(
            f"the worker's environment does not match {lock.name} of this revision:\n  {shown}\n"
            "update the worker's venv (`pip install -r requirements.lock`, then the CUDA torch build: "
            "docs/worker.md) and restart the worker, or run an older revision"
        )
    return len(pins)
