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

from tasks.reporting import scorecard
from tasks.worker.commands import CommandFailed, run

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
# `dvc repro` / `dvc exp run` print this line for each stage they actually run.
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
# ... and this one when a stage's command fails.
REPRO_FAILED = re.compile(r"ERROR: failed to reproduce '([^']+)'")
# The one-line exit message of the project's stages (flows/_stage.py): the reason, stage named.
STAGE_EXIT = re.compile(r"^stage \S+ failed: ")
GIT_ID = ["-c", "user.name=facediff-worker", "-c", "user.email=worker@facediff.invalid", "-c", "commit.gpgsign=false"]


@dataclass
class RunRecord:
    """What the artifact and the flow's return value say about one worker run."""

    repo_url: str
    revision: str
    sha: str
    run_id: str
    experiment: str | None = None  # the DVC experiment name, for experiment runs
    results_branch: str | None = None  # the pushed branch, for plain runs
    results_sha: str | None = None
    stages_run: list[str] = field(default_factory=list)
    params_changed: dict = field(default_factory=dict)  # {file: {param: {"old", "new"}}}
    metrics: dict = field(default_factory=dict)  # {file: {name: value}} of the stages run
    metrics_diff: dict = field(default_factory=dict)  # dvc metrics diff <sha> --all --json
    grids: list[str] = field(default_factory=list)  # images in the outputs of the stages run
    missing_outputs: list[str] = field(default_factory=list)  # in dvc.lock, but not in the DVC remote
    scorecard: dict = field(default_factory=dict)  # tasks/reporting/scorecard.py Card.to_dict() of the checkout
    pushed_data: bool = False
    failure: str | None = None  # one line: why the run failed


class ReproFailed(RuntimeError):
    """`dvc repro` / `dvc exp run` failed; the message is one line (the failing stage and its reason),
    so the flow run's state, the artifact and flows.submit show it whole. The output is in the log."""

    def __init__(self, message: str, stage: str | None = None):
        self.stage = stage
        super().__init__(message)


def one_line(exc: BaseException) -> str:
    """Why a run failed, in one line (the log has the rest): a failed command's last output line."""
    if isinstance(exc, ReproFailed):  # already one line, naming the stage
        return str(exc)
    if isinstance(exc, CommandFailed):
        last = exc.tail.strip().splitlines()[-1:] or [""]
        return f"{' '.join(exc.cmd[:3])} exited {exc.returncode}: {last[0].strip()}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


def repro_failure(output_tail: str) -> ReproFailed:
    """The failing stage and its reason from the tail of DVC's output.

    The reason is the stage's own one-line exit message when it has one (flows/_stage.py), else the
    last line the stage printed before DVC's error (a traceback's last line), else DVC's error.
    """
    lines = [line.strip() for line in output_tail.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
    if not errors:
        return ReproFailed(lines[-1] if lines else "dvc failed with no output")
    first_error = errors[0]
    match = REPRO_FAILED.search(lines[first_error])
    if not match:  # DVC refused before any stage ran (a bad -S, a missing target, ...)
        return ReproFailed(lines[first_error].removeprefix("ERROR:").strip())
    stage, before = match.group(1), lines[:first_error]
    reason = next((line for line in reversed(before) if STAGE_EXIT.match(line)), None)
    if reason is None:
        own = [line for line in before if not line.startswith(("Running stage", ">", "WARNING:"))]
        reason = f"stage {stage} failed: {own[-1] if own else lines[first_error].removeprefix('ERROR:').strip()}"
    return ReproFailed(reason, stage)


def apply_profile(repo: Path, profile: str | None) -> None:
    if profile:
        if not (repo / profile).is_file():
            raise FileNotFoundError(f"profile {profile} is not in this revision")
        run([sys.executable, "-m", "tasks.config.params", "apply", profile], repo)


def reproduce(repo: Path, targets: list[str], set_params: list[str], experiment: str | None) -> list[str]:
    """`dvc repro` or `dvc exp run -n <experiment>`; the names of the stages that really ran."""
    if experiment:
        cmd = ["dvc", "exp", "run", "-n", experiment, *[a for p in set_params for a in ("-S", p)], *targets]
    elif set_params:
        raise ValueError("set_params needs an experiment run (plain repro runs params.yaml as committed)")
    else:
        cmd = ["dvc", "repro", *targets]
    try:
        return RUNNING.findall(run(cmd, repo))
    except CommandFailed as exc:
        raise repro_failure(exc.tail) from None  # the whole output is in the run's log already


def missing_outputs(repo: Path) -> list[str]:
    """Outputs dvc.lock records that neither the DVC remote nor the cache had after `dvc pull
    --allow-missing`: the run rebuilds them (a forgotten `dvc push` on the user's side, usually)."""
    status = first_json(run(["dvc", "data", "status", "--json"], repo))
    return sorted(status.get("not_in_cache", []))


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


def push_data(repo: Path, has_remote: bool | None = None) -> bool:
    """`dvc push` of the outputs the workspace names; False when no DVC remote is configured
    (`has_remote`, when the caller knows it already: each dvc call costs a second)."""
    if not (has_dvc_remote(repo) if has_remote is None else has_remote):
        return False
    run(["dvc", "push"], repo)
    return True


def push_branch(repo: Path, branch: str) -> None:
    run(["git", "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], repo)


def push_experiment(repo: Path, name: str, has_remote: bool | None = None) -> None:
    """The experiment's git ref, and its data when a DVC remote is configured."""
    with_data = has_dvc_remote(repo) if has_remote is None else has_remote
    run(["dvc", "exp", "push", *(() if with_data else ("--no-cache",)), "origin", name], repo)


def declared_paths(repo: Path, stages: list[str], kinds: tuple[str, ...]) -> list[str]:
    """The paths dvc.yaml declares under `kinds` (outs, metrics, plots) of `stages`."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text()) or {}
    paths = []
    for name in stages:
        stage = spec.get("stages", {}).get(name.split("@")[0], {}) or {}
        for kind in kinds:
            for entry in stage.get(kind, []) or []:
                paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def stage_metric_files(repo: Path, stages: list[str]) -> list[str]:
    return declared_paths(repo, stages, ("metrics",))


def output_images(repo: Path, stages: list[str]) -> list[str]:
    """Images in the outputs of `stages`, cached by DVC or kept in git alike.

    Not "what git sees changed": a DVC-cached grid is git-ignored, and a rewritten grid with the
    same pixels is no change to git, yet both were written by this run.
    """
    images = set()
    for rel in declared_paths(repo, stages, ("outs", "plots")):
        path = repo / rel
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        images.update(
            f.relative_to(repo).as_posix() for f in files if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
    return sorted(images)


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


def first_json(out: str) -> dict:
    """The JSON object in a dvc command's output: DVC prints warnings before and after it."""
    start = out.find("{")
    return json.JSONDecoder().raw_decode(out[start:])[0] if start >= 0 else {}


def diff_json(repo: Path, kind: str, against: str) -> dict:
    """`dvc params|metrics diff <against> --json` of the workspace: {file: {name: {old, new, diff}}}.

    Metrics with `--all`: an unchanged metric is then listed (diff 0), so "not listed" means "not
    measured at the revision", never "unchanged".
    """
    extra = ["--all"] if kind == "metrics" else []
    return first_json(run(["dvc", kind, "diff", against, *extra, "--json"], repo))


def describe(repo: Path, record: RunRecord) -> RunRecord:
    """Fill the record's params, metrics and grids from the workspace after the run."""
    record.params_changed = diff_json(repo, "params", record.sha)
    record.metrics_diff = diff_json(repo, "metrics", record.sha)
    record.metrics = read_metrics(repo, stage_metric_files(repo, record.stages_run))
    changed_images = [p for p in changed_paths(repo) if p.lower().endswith(IMAGE_SUFFIXES)]
    record.grids = sorted(set(output_images(repo, record.stages_run)) | set(changed_images))
    record.scorecard = scorecard_of(repo)
    return record


def scorecard_of(repo: Path) -> dict:
    """The checkout's scorecard after the run (every stage's metrics file, run now or committed): a
    broken card is recorded as such and never fails a run whose results are ready to send."""
    try:
        return scorecard.build(repo).to_dict()
    except Exception as exc:  # noqa: BLE001 - the card reports; the run's results matter more
        return scorecard.Card([], error=one_line(exc)).to_dict()


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
    lines = [
        f"# Worker run `{record.run_id}`",
        "",
        f"- repository: `{record.repo_url}`",
        f"- revision: `{record.revision}` = `{record.sha}`",
    ]
    if record.failure:
        lines += [f"- **failed**: {record.failure}"]
    else:
        lines += [
            f"- results: {out if (record.experiment or record.results_branch) else 'nothing changed'}"
            f"{' (data pushed with dvc)' if record.pushed_data else ' (no DVC remote: data not pushed)'}"
        ]
    lines += [f"- stages run: {', '.join(f'`{s}`' for s in record.stages_run) or 'none (all up to date)'}", ""]
    if record.missing_outputs:
        lines += [
            "## Outputs missing from the DVC remote",
            "",
            "`dvc.lock` names them but the remote does not have them, so the run rebuilt them "
            "(was `dvc push` forgotten after the last `dvc repro`?):",
            "",
        ]
        lines += [f"- `{p}`" for p in record.missing_outputs] + [""]
    lines += ["## Params changed against the revision", ""]
    rows = [(f, n, d.get("old"), d.get("new")) for f, ps in record.params_changed.items() for n, d in ps.items()]
    lines += (
        ["| file | param | old | new |", "| --- | --- | --- | --- |"]
        + [f"| {f} | {n} | {json.dumps(o)} | {json.dumps(v)} |" for f, n, o, v in rows[:max_rows]]
        if rows
        else ["none"]
    )
    lines += ["", "## Metrics of the stages run, and `dvc metrics diff` against the revision", ""]
    rows = []
    for path, values in record.metrics.items():
        for name, value in _scalars(values):
            old, diff = _against_revision(record.metrics_diff.get(path, {}).get(name))
            rows.append(f"| {path} | {name} | {value:.6g} | {old} | {diff} |")
    lines += (
        ["| file | metric | value | at the revision | diff |", "| --- | --- | --- | --- | --- |"]
        + rows[:max_rows]
        + ([f"| ... {len(rows) - max_rows} more | | | | |"] if len(rows) > max_rows else [])
        if rows
        else ["none"]
    )
    lines += ["", "## Sample grids written by this run", ""]
    lines += [f"- `{g}`" for g in record.grids] or ["none"]
    if record.scorecard:  # one heading level down: a section of this page
        lines += ["", "#" + scorecard.Card.from_dict(record.scorecard).markdown()]
    return "\n".join(lines)


def _against_revision(entry: dict | None) -> tuple[str, str]:
    """(value at the revision, difference) for the metrics table: a number, "0" when unchanged, and
    "absent" / "new" when the revision did not have the metric (never one sign for both cases)."""
    if not entry or entry.get("old") is None:
        return "absent", "new"
    old, diff = entry["old"], entry.get("diff")
    if not _is_number(old):
        return str(old), "-"
    return f"{old:.6g}", (f"{diff:+.6g}" if _is_number(diff) and diff else "0")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
