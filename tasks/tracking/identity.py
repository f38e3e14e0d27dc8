"""How the identities of code, params, data and models are made: what a stage compares before it
reuses anything it finds on disk (training checkpoints, finished shards), and what dvc.yaml's deps
say a stage runs.

- **code**: the code of a stage is the *module* import closure of its flow: every project module
  the flow imports, at any depth, and every module those import (anywhere in the file: Python runs
  the whole module), plus the packages' `__init__`s and the modules a stage runs in other
  processes (the first argument of `launch(...)` / `run_or_launch(...)`: `accelerate launch -m`).
  Any other string is text, even one that reads like a module name (a model card's code snippet).
  Flows import only the modules their stage runs, and project modules import each other at the top,
  so this static closure is also what Python loads when the stage runs (tests/pipeline/test_deps.py
  checks both). dvc.yaml's code deps are these files
  (tasks/tracking/deps.py); `code_identity()` hashes them with the versions of the libraries that
  compute.
- **params, data**: `identity(*parts)` of JSON-able parts (a config's `to_dict()`, other
  identities); a dataset folder's identity is the hash of its manifest (`data_identity`), which
  lists every shard and the params that made it.
- **models**: `pipelines.identity.module_identity`, the hash of a diffusers model's class, config
  and weights (it lives in pipelines/, which must not import tasks/).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.tracking.hashing import file_digest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "pipelines")  # the project's code; tests/ and benchmarks/ are not stage code
# Libraries whose version changes what a run computes; their versions join the code identity.
LIBRARIES = ("torch", "diffusers", "accelerate", "numpy", "pillow", "webdataset")
# Set by flows/_stage.py's run_stage for the stage a process runs (inherited by `accelerate launch`).
STAGE_ENV = "FACEDIFF_STAGE"
# Calls whose first argument names a module the stage runs in other processes (tasks/processes/launch.py).
MODULE_RUNNERS = ("launch", "run_or_launch")


def module_file(name: str, repo: Path = REPO) -> Path | None:
    """`tasks.latent.train` -> tasks/latent/train.py (or the package's __init__.py); None if not project code."""
    parts = name.split(".")
    if not parts or parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    base = repo.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, repo: Path) -> str:
    rel = path.relative_to(repo).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


@cache
def _imports(path: Path, mtime_ns: int, repo: Path) -> tuple[str, ...]:
    """Every module a file imports (`from a import b` gives both `a` and `a.b`: b may be a module)."""
    package = _module_name(path, repo)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..y import x`
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found += [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        elif (
            isinstance(node, ast.Call)
            and _called(node.func) in MODULE_RUNNERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)  # a module run by name: `launch("tasks.latent.encode", ...)`
    return tuple(found)


def _called(func: ast.expr) -> str | None:
    """`launch` for `launch(...)` and `launch_module.launch(...)`."""
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def stage_code(modules: Iterable[str], repo: Path = REPO) -> list[Path]:
    """The project files that importing `modules` runs: the module import closure (see above)."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            path = module_file(".".join(parts[:i]), repo)
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imports(path, path.stat().st_mtime_ns, repo))
    return sorted(seen)


def loaded_project_files() -> list[Path]:
    """The project files this process has imported so far."""
    files = set()
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if file and Path(file).suffix == ".py":
            path = Path(file).resolve()
            if path.is_relative_to(REPO) and path.relative_to(REPO).parts[0] in PACKAGES:
                files.add(path)
    return sorted(files)


def _library_versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def code_identity(stage: str | None = None, repo: Path = REPO) -> str:
    """The identity of a stage's code (default: the stage this process runs, set by run_stage and
    inherited by `accelerate launch`; outside a stage, e.g. in a notebook or a test, every project
    file: conservative, and the same however the code was entered)."""
    stage = stage or os.environ.get(STAGE_ENV)
    files = (
        stage_code([f"flows.{stage}"], repo)
        if stage
        else sorted(p for package in PACKAGES for p in (repo / package).rglob("*.py"))
    )
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return identity(h.hexdigest(), _library_versions())


def identity(*parts: Any) -> str:
    """A short hash of JSON-able parts: params (`config.to_dict()`), other identities, names."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def data_identity(folder: str | Path) -> str:
    """A dataset folder's identity: its manifest's hash (every shard and the params that made them)."""
    return file_digest(Path(folder) / "manifest.json")
