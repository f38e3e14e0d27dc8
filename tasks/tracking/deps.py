"""dvc.yaml's code deps, computed from what each stage really runs.

A stage's cmd is `python -m flows.<stage> ...`; the code it runs is the module import closure of
that flow (tasks/tracking/identity.py `stage_code`, the same function the code identities of
checkpoints and shards use). Its deps in dvc.yaml must list exactly those files (files, not directories: a directory dep would also re-run
the stage for unrelated files and hides which code counts); data deps (upstream outs, an input folder
named by a param: `${fetch_faces.folder}`) are kept as written.

    python -m tasks.tracking.deps --check   # exit 1, naming every missing or stale code dep
    python -m tasks.tracking.deps --write   # rewrite the code deps in place; the rest of the file untouched

Run `--write` after adding a stage or changing imports; tests/pipeline/test_deps.py runs the check.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tasks.config.params import read_yaml
from tasks.tracking.identity import PACKAGES, REPO, stage_code

FLOW_CMD = re.compile(r"^\s*python\s+-m\s+(flows\.[A-Za-z_][A-Za-z0-9_]*)\b")


class DepsError(Exception):
    """dvc.yaml cannot be checked or written (a stage's flow module is missing, a bad cmd)."""


@dataclass
class StageDeps:
    stage: str
    needed: list[str]  # code files the stage runs (repo-relative)
    listed: list[str]  # code deps dvc.yaml lists now
    directories: list[str] = field(default_factory=list)  # code deps given as directories

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.needed) - set(self.listed))

    @property
    def stale(self) -> list[str]:
        return sorted(set(self.listed) - set(self.needed))

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.directories)


def is_code_dep(dep: str) -> bool:
    """A dep inside the project's code packages (anything else is data or an upstream output)."""
    parts = Path(dep).parts
    return bool(parts) and parts[0] in PACKAGES


def flow_module(stage: str, cmd: str | list, repo: Path) -> str | None:
    """The `flows.<x>` module a stage's cmd runs; None for stages that do not run a flow."""
    text = cmd if isinstance(cmd, str) else " ".join(cmd)
    m = FLOW_CMD.match(text)
    if m is None:
        return None
    module = m.group(1)
    path = repo.joinpath(*module.split(".")).with_suffix(".py")
    if not path.is_file():
        raise DepsError(
            f"stage {stage}: its cmd runs {module}, but {path.relative_to(repo)} does not exist "
            "(write the flow first, then run `python -m tasks.tracking.deps --write`)"
        )
    return module


def stage_deps(stage: str, spec: dict, repo: Path) -> StageDeps | None:
    module = flow_module(stage, spec.get("cmd", ""), repo)
    if module is None:
        return None
    needed = [p.relative_to(repo).as_posix() for p in stage_code([module], repo)]
    listed, dirs = [], []
    for dep in spec.get("deps") or []:
        dep = str(dep)
        if not is_code_dep(dep):
            continue
        (dirs if (repo / dep).is_dir() else listed).append(dep.rstrip("/"))
    return StageDeps(stage, needed, listed, dirs)


def _load(dvc_yaml: Path) -> dict:
    return read_yaml(dvc_yaml) or {}


def analyse(repo: Path = REPO) -> list[StageDeps]:
    """Every flow stage's needed vs listed code deps. Raises DepsError naming every broken stage."""
    doc = _load(repo / "dvc.yaml")
    results, errors = [], []
    for stage, spec in (doc.get("stages") or {}).items():
        try:
            found = stage_deps(stage, spec, repo)
        except DepsError as exc:
            errors.append(str(exc))
            continue
        if found is not None:
            results.append(found)
    if errors:
        raise DepsError("\n".join(errors))
    return results


def _deps_block(lines: list[str], stage: str) -> tuple[int, int, str]:
    """Line range [start, end) of `stage`'s deps items in dvc.yaml's text, and their indent."""
    head = next((n for n, line in enumerate(lines) if line.rstrip() == f"  {stage}:"), None)
    if head is None:
        raise DepsError(f"stage {stage}: not found as '  {stage}:' in dvc.yaml")
    n = head + 1
    while n < len(lines) and (not lines[n].strip() or lines[n].startswith("    ") or lines[n].lstrip().startswith("#")):
        if lines[n].rstrip() == "    deps:":
            start = n + 1
            end = start
            while (
                end < len(lines)
                and lines[end].lstrip().startswith(("- ", "#"))
                and len(lines[end]) - len(lines[end].lstrip()) > 4
            ):
                end += 1
            indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())] if end > start else " " * 6
            return start, end, indent
        n += 1
    raise DepsError(f"stage {stage}: no 'deps:' list in dvc.yaml (add one, even with a single file)")


def _rewrite(text: str, stage: str, needed: list[str]) -> str:
    """`stage`'s deps: the needed code files, then its other deps' lines as they were (comments kept).

    A text edit, not a YAML round trip: the rest of dvc.yaml (folded cmd lines, comments, other
    helpers' sections) stays byte for byte."""
    lines = text.splitlines(keepends=True)
    start, end, indent = _deps_block(lines, stage)
    kept = [
        line
        for line in lines[start:end]
        if not (line.lstrip().startswith("- ") and is_code_dep(line.lstrip()[2:].split("#")[0].strip()))
    ]
    new = [f"{indent}- {dep}\n" for dep in needed] + kept
    return "".join(lines[:start] + new + lines[end:])


def write(repo: Path = REPO) -> list[StageDeps]:
    """Rewrite each flow stage's code deps to what it runs; returns the stages that changed."""
    path = repo / "dvc.yaml"
    doc = _load(path)
    text = path.read_text()
    changed = []
    for stage, spec in (doc.get("stages") or {}).items():
        found = stage_deps(stage, spec, repo)  # raises on a missing flow: nothing is written then
        if found is None or found.ok:
            continue
        text = _rewrite(text, stage, found.needed)
        changed.append(found)
    if changed:
        tmp = path.with_name("dvc.yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return changed


def report(results: list[StageDeps]) -> list[str]:
    lines = []
    for r in results:
        for dep in r.missing:
            lines.append(f"{r.stage}: runs {dep} but does not depend on it")
        for dep in r.stale:
            lines.append(f"{r.stage}: depends on {dep}, which it does not run")
        for dep in r.directories:
            lines.append(f"{r.stage}: code dep {dep} is a directory; list its files")
    return lines


def _lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()
TEMPLATE = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


def resolve(dep: str, params: dict) -> str:
    """A dep as DVC reads it: `${section.key}` replaced by params.yaml's value (dvc.yaml templating;
    an input folder named by a param). Left as written when the param is missing."""
    return TEMPLATE.sub(
        lambda m: m.group(0) if _lookup(params, m.group(1)) is _MISSING else str(_lookup(params, m.group(1))), dep
    )


def _md5(path: Path) -> str:
    """DVC 3's md5 of a file: the plain md5 of its bytes."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lock_problems(repo: Path = REPO) -> list[str]:
    """Where the committed dvc.lock does not record the stage definitions, code and params of the
    working tree: a stage never run, another cmd, another deps list, a code file's md5, a param's
    value. Data deps (other stages' outputs) are not checked: that needs the data, and their own
    stage's entry covers them."""
    stages = _load(repo / "dvc.yaml").get("stages") or {}
    lock = (_load(repo / "dvc.lock").get("stages") or {}) if (repo / "dvc.lock").is_file() else {}
    params_file = repo / "params.yaml"
    params = _load(params_file) if params_file.is_file() else {}
    outs = {
        str(next(iter(o)) if isinstance(o, dict) else o).rstrip("/")
        for spec in stages.values()
        for kind in ("outs", "metrics", "plots")
        for o in spec.get(kind) or []
    }
    problems = []
    for stage, spec in stages.items():
        entry = lock.get(stage)
        if entry is None:
            problems.append(f"{stage}: not in dvc.lock (never run)")
            continue
        if " ".join(resolve(str(spec.get("cmd", "")), params).split()) != " ".join(str(entry.get("cmd", "")).split()):
            problems.append(f"{stage}: cmd differs from the one dvc.lock recorded")
        wanted = [resolve(str(d), params) for d in spec.get("deps") or []]
        recorded = {d["path"]: d for d in entry.get("deps") or []}
        for dep in sorted(set(wanted) ^ set(recorded)):
            problems.append(f"{stage}: dep {dep} is {'new' if dep in wanted else 'gone'} since dvc.lock")
        for dep in wanted:
            path = repo / dep
            if dep not in recorded or dep.rstrip("/") in outs or not path.is_file():
                continue  # data (another stage's output, or a folder): checked by its own stage
            if recorded[dep].get("md5") != _md5(path):
                problems.append(f"{stage}: {dep} changed since dvc.lock recorded it")
        recorded_params = (entry.get("params") or {}).get("params.yaml", {})
        for key in spec.get("params") or []:
            key = str(next(iter(key)) if isinstance(key, dict) else key)
            now = _lookup(params, key)
            if key not in recorded_params or now is _MISSING or recorded_params[key] != now:
                problems.append(f"{stage}: params {key} differ from dvc.lock")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if any stage's code deps are incomplete or stale")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps in place")
    mode.add_argument("--lock", action="store_true", help="exit 1 if dvc.lock is stale for the code or params")
    parser.add_argument("--repo", default=str(REPO), help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    if args.lock:
        problems = lock_problems(repo)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print(
                f"dvc.lock is stale in {len(problems)} place(s): run `dvc repro` and commit dvc.lock with the "
                "outputs it made",
                file=sys.stderr,
            )
        return 1 if problems else 0
    try:
        if args.write:
            changed = write(repo)
            for line in report(changed):
                print(f"fixed: {line}")
            print(
                f"dvc.yaml: code deps of {len(changed)} stage(s) rewritten"
                if changed
                else "dvc.yaml: code deps already complete"
            )
            return 0
        problems = report(analyse(repo))
    except DepsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"{len(problems)} code dep problem(s); fix with `python -m tasks.tracking.deps --write`", file=sys.stderr)
        return 1
    print("dvc.yaml: every stage depends on exactly the code it runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
