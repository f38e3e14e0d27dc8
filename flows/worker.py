"""The flow a GPU worker runs: one revision, checked out alone, reproduced, its results sent back.

    fetch the revision (-> SHA) -> isolated checkout (+ requirements.lock check) -> dvc pull
    -> dvc repro | dvc exp run -> describe (params/metrics diff, grids) -> commit + dvc push +
    git push of results/<sha>-<run> | dvc exp push -> artifacts -> delete the checkout

Two artifacts per run, also after a failure once the revision is known: `facediff-worker-run`
(markdown, for people, ending with the scorecard) and `facediff-worker-record` (the RunRecord as JSON,
for flows.submit); once the stages have run, a third: `facediff-scorecard` (markdown: each stage's
headline figure against its target and one verdict line, tasks/reporting/scorecard.py), whose
history across runs the Prefect UI lists under that key.

Deployed by prefect.yaml; runnable by hand too (docs/worker.md):

    python -m flows.worker --repo-url https://git.example/facediff.git --revision main
        --workdir /scratch/facediff-worker --profile configs/cartoon_seed.yaml --experiment
"""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import asdict

from prefect import flow, runtime
from prefect.artifacts import Artifact, create_markdown_artifact

from tasks.reporting.scorecard import Card
from tasks.worker.checkout import validate_repo_url, validate_revision
from tasks.worker.results import RunRecord, markdown, one_line
from tasks.worker.stages import (
    checkout_task,
    cleanup_task,
    commit_results_task,
    describe_task,
    fetch_revision_task,
    pull_task,
    push_branch_task,
    push_data_task,
    push_experiment_task,
    reproduce_task,
)


def current_run_id() -> str:
    """The Prefect flow run id (names the checkout and results), or a fresh one outside Prefect."""
    return str(runtime.flow_run.id or uuid.uuid4())


@flow(name="repro-on-worker")
def repro_on_worker(
    repo_url: str,
    revision: str,
    workdir: str,
    targets: list[str] | None = None,
    profile: str | None = None,
    set_params: list[str] | None = None,
    experiment: bool = False,
    keep_checkout: bool = False,
) -> dict:
    # Every check on the inputs comes before anything touches the disk.
    repo_url, revision = validate_repo_url(repo_url), validate_revision(revision)
    run_id = current_run_id()
    mirror, sha = fetch_revision_task(workdir, repo_url, revision)
    record = RunRecord(
        repo_url=repo_url,
        revision=revision,
        sha=sha,
        run_id=run_id,
        experiment=f"worker-{sha[:7]}-{run_id[:8]}" if experiment else None,
    )
    try:
        repo = checkout_task(workdir, mirror, repo_url, sha, run_id)
        reproduce_and_send(repo, record, targets or [], profile, set_params or [])
    except Exception as exc:
        record.failure = one_line(exc)
        publish(record)
        raise
    publish(record)
    if not keep_checkout:  # after a failure it stays, for inspection
        cleanup_task(repo)
    return asdict(record)


def reproduce_and_send(
    repo: str, record: RunRecord, targets: list[str], profile: str | None, set_params: list[str]
) -> None:
    """pull, reproduce, describe, and push the results back; fills `record` as it goes."""
    has_remote, record.missing_outputs = pull_task(repo)
    record.stages_run = reproduce_task(repo, targets, profile, set_params, record.experiment)
    # A task's return value is a copy of the record it got: take its fields back into this one.
    vars(record).update(vars(describe_task(repo, record)))
    if record.experiment:
        push_experiment_task(repo, record.experiment, has_remote)
        record.pushed_data = has_remote
    else:
        committed = commit_results_task(repo, record.sha, record.run_id, record.stages_run)
        record.pushed_data = push_data_task(repo, has_remote)  # the data first: the branch must never name missing data
        if committed:
            record.results_branch, record.results_sha = committed
            push_branch_task(repo, record.results_branch)


def publish(record: RunRecord) -> None:
    """The run's artifacts: markdown for the UI, the record as JSON for flows.submit."""
    create_markdown_artifact(
        markdown(record), key="facediff-worker-run", description=f"worker run at {record.sha[:12]}"
    )
    if record.scorecard:
        card = Card.from_dict(record.scorecard)
        create_markdown_artifact(
            card.markdown(), key="facediff-scorecard", description=f"{record.sha[:12]}: {card.verdict()}"[:500]
        )
    Artifact(
        type="json",
        key="facediff-worker-record",
        data=asdict(record),
        description="the RunRecord of tasks/worker/results.py",
    ).create()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-url", required=True)
    parser.add_argument("--revision", required=True, help="branch, tag or commit SHA (resolved after a fetch)")
    parser.add_argument("--workdir", required=True, help="a new or empty folder (the worker marks it as its own)")
    parser.add_argument("--target", action="append", dest="targets", help="stage to repro (repeatable)")
    parser.add_argument("--profile", help="configs/X.yaml merged into params.yaml first")
    parser.add_argument("--set-param", action="append", dest="set_params", help="key=value (with --experiment)")
    parser.add_argument("--experiment", action="store_true", help="dvc exp run + dvc exp push instead of a branch")
    parser.add_argument("--keep-checkout", action="store_true", help="leave workdir/runs/<run> in place")
    args = parser.parse_args()
    print(json.dumps(repro_on_worker(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
