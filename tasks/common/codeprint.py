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
from dataclasses import dataclass
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


Target = tuple[str, "str | None"]  # (module, the name taken from it, or None for the whole module)


@dataclass(frozen=True)
class _Parsed:
    top: tuple[Target, ...]           # imports run when the module is imported
    top_refs: frozenset[str]          # names module-level code uses (decorators, __main__ blocks, ...)
    defs: dict                        # top-level function/class -> (its own imports, names it uses)


def _targets(node: ast.AST, package: str) -> list[Target]:
    """What one import statement (or a string naming a module) brings in."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parts = package.split(".") if package else []
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        return [(base, None if a.name == "*" else a.name) for a in node.names]
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGES):
        return [(node.value, None)]  # e.g. `launch("tasks.latent.train", ...)`
    return []


def _scan(nodes: list[ast.AST], package: str) -> tuple[list[Target], set[str]]:
    targets, names = [], set()
    for root in nodes:
        for node in ast.walk(root):
            targets.extend(_targets(node, package))
            if isinstance(node, ast.Name):
                names.add(node.id)
    return targets, names


@lru_cache(maxsize=None)
def _parse(path: Path, mtime_ns: int, repo: Path) -> _Parsed:
    """A module's imports split by where they run: at import time, or inside one top-level
    function or class (a lazy import counts only where that function is used)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, repo)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    top_nodes: list[ast.AST] = []
    defs = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # Decorators, defaults and base classes run at import time; the body when used.
            top_nodes.extend(stmt.decorator_list)
            if isinstance(stmt, ast.ClassDef):
                top_nodes.extend(stmt.bases)
            else:
                top_nodes.extend(d for d in stmt.args.defaults + stmt.args.kw_defaults if d is not None)
            targets, names = _scan([stmt], package)
            defs[stmt.name] = (tuple(targets), frozenset(names))
        else:
            top_nodes.append(stmt)
    targets, names = _scan(top_nodes, package)
    return _Parsed(tuple(targets), frozenset(names), defs)


def _parsed(path: Path, repo: Path) -> _Parsed:
    return _parse(path, path.stat().st_mtime_ns, repo)


def project_files(modules: Iterable[str], repo: Path = REPO) -> list[Path]:
    """The project files that running `modules` can execute: the static import closure, where an
    import inside a function counts only if that function is reachable (so importing one Prefect
    task from a module of several does not pull in the others' work modules)."""
    needed: dict[Path, set[str]] = {}   # module -> its top-level functions/classes reached so far
    todo: list[Target] = [(m, None) for m in modules]
    pending: list[tuple[Path, str]] = []

    def visit(path: Path) -> None:
        """First visit of a module: what its import runs."""
        if path in needed:
            return
        needed[path] = set()
        parsed = _parsed(path, repo)
        todo.extend(parsed.top)
        pending.extend((path, n) for n in parsed.top_refs if n in parsed.defs)

    while todo or pending:
        while todo:
            name, symbol = todo.pop()
            if not name:
                continue
            if symbol is not None and module_file(f"{name}.{symbol}", repo) is not None:
                name, symbol = f"{name}.{symbol}", None  # `from pkg import module`
            path = module_file(name, repo)
            if path is None:
                continue
            for init in _package_inits(name, repo):
                visit(init)
            visit(path)
            # The whole module (`import x`, a module named by a string): every function may run.
            symbols = _parsed(path, repo).defs if symbol is None else [symbol]
            pending.extend((path, n) for n in symbols)
        while pending:
            path, symbol = pending.pop()
            defs = _parsed(path, repo).defs
            if symbol not in defs and "__getattr__" in defs:
                symbol = "__getattr__"  # a name the module makes on demand (PEP 562)
            if symbol not in defs or symbol in needed[path]:
                continue  # each function once: recursion and mutual calls end here
            needed[path].add(symbol)
            targets, names = defs[symbol]
            todo.extend(targets)
            pending.extend((path, n) for n in names if n in defs)
    return sorted(needed)


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
