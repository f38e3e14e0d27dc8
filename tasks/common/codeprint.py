"""Which project files a piece of code runs, and a fingerprint of them: the one answer to "what code
made this?" used by every resumable stage (training checkpoints, finished shards) and by the
dvc.yaml deps generator (tasks/common/deps.py).

The closure is static (`ast`), not what a process happened to import so far: modules imported
inside functions (lazy imports) and modules named by a string (the target of `accelerate launch
-m tasks.latent.train`, `importlib.import_module(...)`) count too. Importing `a.b.c` runs
`a/__init__.py` and `a/b/__init__.py`, so those count as well.
"""
from __future__ import annotations

import ast
import hashlib
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterable

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "pipelines")  # the project's code; tests/ and benchmarks/ are not stage code
# Libraries whose version changes what a run computes; their versions join the fingerprint.
LIBRARIES = ("torch", "diffusers", "accelerate", "numpy", "pillow", "webdataset")


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


def _package_inits(name: str, repo: Path) -> list[Path]:
    parts = name.split(".")
    found = []
    for i in range(1, len(parts) + 1):
        init = repo.joinpath(*parts[:i], "__init__.py")
        if init.is_file():
            found.append(init)
    return found


def _module_name(path: Path, repo: Path) -> str:
    rel = path.relative_to(repo).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@lru_cache(maxsize=None)
def _imported_names(path: Path, mtime_ns: int, repo: Path) -> tuple[str, ...]:
    """Every module name `path` may import: import statements anywhere in the file (absolute and
    relative, `from a import b` as both `a` and `a.b`) and string constants that name a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, repo)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGES):
            names.add(node.value)
    return tuple(sorted(n for n in names if n))


def project_files(modules: Iterable[str], repo: Path = REPO) -> list[Path]:
    """The project files that running `modules` can execute: the static import closure."""
    seen: set[Path] = set()
    todo: list[str] = list(modules)
    done_names: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done_names:
            continue
        done_names.add(name)
        if module_file(name, repo) is None:
            continue
        for path in _package_inits(name, repo) + [module_file(name, repo)]:
            if path in seen:
                continue
            seen.add(path)
            todo.extend(_imported_names(path, path.stat().st_mtime_ns, repo))
    return sorted(seen)


def loaded_project_modules() -> list[str]:
    """Project modules this process has imported (the entry module included, whatever its name)."""
    names = []
    for mod in list(sys.modules.values()):
        file = getattr(mod, "__file__", None)
        if not file:
            continue
        try:
            rel = Path(file).resolve().relative_to(REPO)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in PACKAGES and rel.suffix == ".py":
            names.append(_module_name(REPO / rel, REPO))
    return sorted(set(names))


def hash_files(files: Iterable[Path], repo: Path = REPO) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(repo).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def library_versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def code_fingerprint(modules: Iterable[str] | None = None) -> str:
    """A short hash of the code this process runs: the source of every project file reachable from
    the project modules it has imported (or from `modules`), plus the versions of the libraries
    that compute. Anything reused from disk must carry the same value."""
    roots = loaded_project_modules() if modules is None else list(modules)
    h = hashlib.sha256(hash_files(project_files(roots, REPO), REPO).encode())
    h.update(repr(sorted(library_versions().items())).encode())
    return h.hexdigest()[:16]
