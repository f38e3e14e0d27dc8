"""The worker run's steps as Prefect tasks (step X is `X_task`, named "X").

Retries only where a retry can help: the tasks that talk to the git host or the DVC remote retry
a TransientError (network/remote output), with the reason in the log; a revision that does not
exist, a failing stage or bad input fails at once.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.reporting.log import get_logger
from tasks.worker import checkout, environment, results
from tasks.worker.commands import retry_if_transient, run

NETWORK = dict(retries=2, retry_delay_seconds=15, retry_condition_fn=retry_if_transient)


@task(name="fetch_revision", cache_policy=NO_CACHE, **NETWORK)
def fetch_revision_task(workdir: str, repo_url: str, revision: str) -> tuple[str, str]:
    """(mirror path, full SHA) of `revision` as the remote has it now."""
    mirror, sha = checkout.fetch_revision(workdir, repo_url, revision)
    return str(mirror), sha


@task(name="checkout", cache_policy=NO_CACHE)
def checkout_task(workdir: str, mirror: str, repo_url: str, sha: str, run_id: str) -> str:
    repo = checkout.isolated_checkout(workdir, Path(mirror), repo_url, sha, run_id)
    pins = environment.check_lock(repo)
    get_logger().info("environment matches requirements.lock (%d pins)", pins)
    return str(repo)


@task(name="pull", cache_policy=NO_CACHE, **NETWORK)
def pull_task(repo: str) -> tuple[bool, list[str]]:
    """(DVC remote configured?, outputs dvc.lock names that the remote lacks).

    Missing outputs are rebuilt by the run (`--allow-missing`), and named here, in the log and the
    artifact: a forgotten `dvc push` must not pass for a pipeline that needed to run.
    """
    if not results.has_dvc_remote(Path(repo)):
        get_logger().warning("no DVC remote configured: every stage runs from scratch, nothing is pushed")
        return False, []
    run(["dvc", "pull", "--allow-missing"], repo)
    missing = results.missing_outputs(Path(repo))
    if missing:
        get_logger().warning(
            "%d outputs recorded in dvc.lock are not in the DVC remote: the stages that "
            "make them will run again (was `dvc push` forgotten?): %s",
            len(missing),
            ", ".join(missing),
        )
    return True, missing


@task(name="reproduce", cache_policy=NO_CACHE)
def reproduce_task(
    repo: str, targets: list[str], profile: str | None, set_params: list[str], experiment: str | None
) -> list[str]:
    results.apply_profile(Path(repo), profile)
    stages = results.reproduce(Path(repo), targets, set_params, experiment)
    get_logger().info("stages run: %s", ", ".join(stages) or "none (all up to date)")
    return stages


@task(name="describe", cache_policy=NO_CACHE)
def describe_task(repo: str, record: results.RunRecord) -> results.RunRecord:
    return results.describe(Path(repo), record)


@task(name="commit_results", cache_policy=NO_CACHE)
def commit_results_task(repo: str, sha: str, run_id: str, stages: list[str]) -> tuple[str, str] | None:
    return results.commit_results(Path(repo), sha, run_id, stages)


@task(name="push_data", cache_policy=NO_CACHE, **NETWORK)
def push_data_task(repo: str, has_remote: bool) -> bool:
    return results.push_data(Path(repo), has_remote)


@task(name="push_branch", cache_policy=NO_CACHE, **NETWORK)
def push_branch_task(repo: str, branch: str) -> None:
    results.push_branch(Path(repo), branch)


@task(name="push_experiment", cache_policy=NO_CACHE, **NETWORK)
def push_experiment_task(repo: str, name: str, has_remote: bool) -> None:
    results.push_experiment(Path(repo), name, has_remote)


@task(name="cleanup", cache_policy=NO_CACHE)
def cleanup_task(repo: str) -> None:
    """Delete the run's checkout (results are pushed); refuses a folder the worker did not create."""
    checkout.remove_owned(Path(repo))
