"""Run the stages in a worker checkout, send the results back, and describe the run.

A plain run commits what `dvc repro` changed (dvc.lock, metrics, small grids, params.yaml when a
profile was applied) on a new branch `results/<sha12>-<run>` and pushes the data (`dvc push`) before
the branch (`git push`), so the branch never names data the remote lacks. The user then runs
`git fetch origin results/...` and `dvc pull`. An experiment run is `dvc exp run -n <name>`, sent
with `dvc exp push origin <name>` (git ref and data), fetched with `dvc exp pull origin <name>`.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tasks.worker.commands import run

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
# `dvc repro` / `dvc exp run` print this line for each stage they actually run.
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
GIT_ID = ["-c", "user.name=facediff-worker", "-c", "user.email=worker@facediff.invalid", "-c", "commit.gpgsign=false"]


@dataclass
class RunRecord:
    """What the artifact and the flow's return value say about one worker run."""
    repo_url: str
    revision: str
    sha: str
    run_id: str
    experiment: str | None = None        # the DVC experiment name, for experiment runs
    results_branch: str | None = None    # the pushed branch, for plain runs
    results_sha: str | None = None
    stages_run: list[str] = field(default_factory=list)
    params_changed: dict = field(default_factory=dict)    # {file: {param: {"old", "new"}}}
    metrics: dict = field(default_factory=dict)           # {file: {name: value}} of the stages run
    metrics_diff: dict = field(default_factory=dict)      # dvc metrics diff <sha> --json
    grids: list[str] = field(default_factory=list)        # image files this run wrote or changed
    pushed_data: bool = False


def apply_profile(repo: Path, profile: str | None) -> None:
    if profile:
        if not (repo / profile).is_file():
            raise FileNotFoundError(f"profile {profile} is not in this revision")
        run([sys.executable, "-m", "tasks.common.params", "apply", profile], repo)


def reproduce(repo: Path, targets: list[str], set_params: list[str], experiment: str | None) -> list[str]:
    """`dvc repro` or `dvc exp run -n <experiment>`; the names of the stages that really ran."""
    if experiment:
        cmd = ["dvc", "exp", "run", "-n", experiment, *[a for p in set_params for a in ("-S", p)], *targets]
    elif set_params:
        raise ValueError("set_params needs an experiment run (plain repro runs params.yaml as committed)")
    else:
        cmd = ["dvc", "repro", *targets]
    return RUNNING.findall(run(cmd, repo))


def has_dvc_remote(repo: Path) -> bool:
    return bool(run(["dvc", "remote", "list"], repo).strip())


def changed_paths(repo: Path) -> list[str]:
    """Paths git sees changed or new in the checkout (ignored files, e.g. DVC-cached outs, excluded)."""
    out = run(["git", "status", "--porcelain", "--untracked-files=all", "-z"], repo)
    return sorted({entry[3:] for entry in out.split("\0") if len(entry) > 3})


def commit_results(repo: Path, sha: str, run_id: str, stages: list[str]) -> tuple[str, str] | None:
    """Commit the run's changes on `results/<sha12>-<run>`; (branch, commit) or None if nothing changed."""
    if not changed_paths(repo):
        return None
    branch = f"results/{sha[:12]}-{run_id[:8]}"
    run(["git", "checkout", "--quiet", "-b", branch], repo)
    run(["git", "add", "--all"], repo)  # the checkout is this run's alone; .gitignore keeps DVC outs out
    message = f"Worker results of {sha[:12]} (run {run_id}): {', '.join(stages) or 'no stage ran'}"
    run(["git", *GIT_ID, "commit", "--quiet", "-m", message], repo)
    return branch, run(["git", "rev-parse", "HEAD"], repo).strip()


def push_data(repo: Path) -> bool:
    """`dvc push` of the outputs the workspace names; False when no DVC remote is configured."""
    if not has_dvc_remote(repo):
        return False
    run(["dvc", "push"], repo)
    return True


def push_branch(repo: Path, branch: str) -> None:
    run(["git", "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], repo)


def push_experiment(repo: Path, name: str) -> None:
    """The experiment's git ref, and its data when a DVC remote is configured."""
    run(["dvc", "exp", "push", *(() if has_dvc_remote(repo) else ("--no-cache",)), "origin", name], repo)


def stage_metric_files(repo: Path, stages: list[str]) -> list[str]:
    """The metrics files dvc.yaml declares for `stages`."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text()) or {}
    files = []
    for name in stages:
        for entry in (spec.get("stages", {}).get(name.split("@")[0], {}) or {}).get("metrics", []) or []:
            files.extend(entry if isinstance(entry, dict) else [entry])
    return files


def read_metrics(repo: Path, files: list[str]) -> dict:
    metrics = {}
    for rel in files:
        path = repo / rel
        if path.is_file():
            try:
                metrics[rel] = json.loads(path.read_text())
            except json.JSONDecodeError:
                metrics[rel] = {"error": "not JSON"}
    return metrics


def diff_json(repo: Path, kind: str, against: str) -> dict:
    """`dvc params|metrics diff <against> --json` of the workspace: {file: {name: {old, new, diff}}}."""
    out = run(["dvc", kind, "diff", against, "--json"], repo).strip()
    start = out.find("{")  # DVC may print warnings before the JSON
    return json.loads(out[start:]) if start >= 0 else {}


def describe(repo: Path, record: RunRecord) -> RunRecord:
    """Fill the record's params, metrics and grids from the workspace after the run."""
    record.params_changed = diff_json(repo, "params", record.sha)
    record.metrics_diff = diff_json(repo, "metrics", record.sha)
    record.metrics = read_metrics(repo, stage_metric_files(repo, record.stages_run))
    record.grids = [p for p in changed_paths(repo) if p.lower().endswith(IMAGE_SUFFIXES)]
    return record


def _scalars(values, prefix: str = ""):
    """(dotted name, number) for every number in a nested metrics dict."""
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _scalars(value, f"{prefix}{key}.")
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        yield prefix[:-1], values


def markdown(record: RunRecord, max_rows: int = 40) -> str:
    """The Prefect artifact: what ran, on which commit, with which params, and what it measured."""
    out = record.experiment and f"experiment `{record.experiment}`" or f"branch `{record.results_branch}`"
    lines = [f"# Worker run `{record.run_id}`", "",
             f"- repository: `{record.repo_url}`", f"- revision: `{record.revision}` = `{record.sha}`",
             f"- results: {out if (record.experiment or record.results_branch) else 'nothing changed'}"
             f"{' (data pushed with dvc)' if record.pushed_data else ' (no DVC remote: data not pushed)'}",
             f"- stages run: {', '.join(f'`{s}`' for s in record.stages_run) or 'none (all up to date)'}", ""]
    lines += ["## Params changed against the revision", ""]
    rows = [(f, n, d.get("old"), d.get("new")) for f, ps in record.params_changed.items() for n, d in ps.items()]
    lines += (["| file | param | old | new |", "| --- | --- | --- | --- |"]
              + [f"| {f} | {n} | {json.dumps(o)} | {json.dumps(v)} |" for f, n, o, v in rows[:max_rows]]
              if rows else ["none"])
    lines += ["", "## Metrics of the stages run, and `dvc metrics diff` against the revision", ""]
    rows = []
    for path, values in record.metrics.items():
        for name, value in _scalars(values):
            d = record.metrics_diff.get(path, {}).get(name, {})
            rows.append(f"| {path} | {name} | {value:.6g} | {_fmt(d.get('old'))} | {_fmt(d.get('diff'))} |")
    lines += (["| file | metric | value | at the revision | diff |", "| --- | --- | --- | --- | --- |"]
              + rows[:max_rows] + ([f"| ... {len(rows) - max_rows} more | | | | |"] if len(rows) > max_rows else [])
              if rows else ["none"])
    lines += ["", "## Sample grids written by this run", ""]
    lines += [f"- `{g}`" for g in record.grids] or ["none"]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
