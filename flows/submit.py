"""One command from a commit to its results on the GPU worker.

    python -m flows.submit [STAGE ...] [-S section.key=value ...] [--profile configs/X.yaml]

1. checks the commit: a clean working tree, and HEAD on the git remote the worker fetches from
   (each refusal prints the command that fixes it);
2. runs the worker's deployment (prefect.yaml, `repro-on-worker/repro` unless --deployment) at that
   SHA through Prefect's API. `-S` makes the run a DVC experiment (`dvc exp run -S ...`), STAGE
   limits it to those stages and what they need, --profile applies a scale profile first;
3. follows the flow run: its state, the worker's log lines as they arrive, a line per stage;
4. brings the results home: `dvc exp pull` of an experiment (its grids are copied under
   .dvc/tmp/submit/<name>/), or a plain run's results branch (switched to) + `dvc pull`; then prints
   `dvc metrics diff` against the commit sent, the paths of the run's sample grids, and the run's
   scorecard (tasks/reporting/scorecard.py: each stage's headline figure against its target, one
   verdict line; a missed target does not change the exit status).

On failure it prints the failing stage's reason and the flow run's address and exits 1; Ctrl-C
cancels the flow run (exit 130); a refusal before anything is sent exits 2. It needs
PREFECT_API_URL: the server the worker polls (docs/worker.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks.reporting import scorecard
from tasks.worker import follow, local

DEFAULT_DEPLOYMENT = "repro-on-worker/repro"
EXIT_FAILED, EXIT_REFUSED, EXIT_INTERRUPTED = 1, 2, 130


def say(line: str) -> None:
    print(line, flush=True)


def key_value(text: str) -> str:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (e.g. train_cartoon.lr=2e-4)")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("targets", nargs="*", metavar="STAGE", help="stages to reproduce (default: all)")
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        dest="set_params",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="override a param: the run becomes a DVC experiment (repeatable)",
    )
    parser.add_argument("--profile", help="configs/X.yaml, applied on top of params.yaml on the worker")
    parser.add_argument("--experiment", action="store_true", help="a DVC experiment even without -S")
    parser.add_argument(
        "--deployment", default=DEFAULT_DEPLOYMENT, help=f"flow/deployment (default {DEFAULT_DEPLOYMENT})"
    )
    parser.add_argument("--remote", default="origin", help="the git remote the worker fetches from (default origin)")
    parser.add_argument("-q", "--quiet", action="store_true", help="state and stage lines only, not the worker's log")
    return parser.parse_args(argv)


def parameters(args: argparse.Namespace, sha: str) -> dict:
    """The flow run's parameters: only what was asked, so the deployment's own defaults (a
    profile, targets, experiment: true in cartoon-seed) hold otherwise."""
    params: dict = {"revision": sha}  # a string, so an all-digit SHA needs no quoting here
    if args.targets:
        params["targets"] = args.targets
    if args.profile:
        params["profile"] = args.profile
    if args.set_params:
        params["set_params"] = args.set_params
    if args.set_params or args.experiment:
        params["experiment"] = True
    return params


def check_commit(repo: Path, args: argparse.Namespace) -> str:
    """The SHA to send, after the checks that a worker run of it can work (local.Refused if not)."""
    local.check_clean(repo)
    sha = local.head_commit(repo)
    if args.profile:
        local.check_in_commit(repo, sha, args.profile)
    local.check_pushed(repo, args.remote, sha)
    return sha


def check_deployment(repo: Path, args: argparse.Namespace) -> None:
    """The deployment exists on the configured server; say so when it fetches from another URL."""
    follow.api_url()
    deployment = follow.read_deployment(args.deployment)
    theirs, ours = (deployment.parameters or {}).get("repo_url"), local.remote_url(repo, args.remote)
    if theirs and theirs != ours:
        say(f"note: {args.deployment} fetches from {theirs}; your {args.remote} is {ours}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        repo = local.repo_root(Path.cwd())
        sha = check_commit(repo, args)
        check_deployment(repo, args)
    except (local.Refused, local.CommandError, follow.NoServer) as exc:
        print(f"flows.submit: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    run = follow.start(args.deployment, parameters(args, sha))
    say(f"==> flow run {run.name} ({args.deployment}) of {sha[:12]}: {follow.run_address(run)}")
    try:
        run = follow.follow(run.id, say, show_log=not args.quiet)
    except KeyboardInterrupt:
        return cancel(run, say)
    record = follow.read_record(run.id)
    if not run.state.is_completed():
        say(f"FAILED ({run.state.name}): {follow.failure_reason(run, record)}")
        say(f"flow run: {follow.run_address(run)}")
        return EXIT_FAILED
    try:
        return bring_home(repo, args.remote, sha, record)
    except local.CommandError as exc:
        say(f"the run succeeded but its results could not be brought home: {exc}")
        return EXIT_FAILED


def cancel(run, say) -> int:
    """Ctrl-C: cancel the flow run and wait (a while) for the worker to stop it; Ctrl-C again quits."""
    say(f"==> Ctrl-C: cancelling flow run {run.name} (Ctrl-C again: stop waiting)")
    try:
        follow.cancel(run.id)
        final = follow.follow(run.id, say, show_log=False, timeout_s=90)
    except KeyboardInterrupt:
        final = None
    if final is None or not final.state.is_final():
        say(f"not waiting for the worker any longer; the flow run: {follow.run_address(run)}")
    return EXIT_INTERRUPTED


def bring_home(repo: Path, remote: str, sha: str, record: dict | None) -> int:
    """Pull the run's results into this checkout; print the metrics diff and the grids."""
    if record is None:
        say("the worker published no record of the run (facediff-worker-record): nothing to bring home")
        return EXIT_FAILED
    if record.get("missing_outputs"):
        say(
            f"warning: the DVC remote lacked {len(record['missing_outputs'])} outputs of {sha[:12]}, so the "
            f"worker rebuilt them: {', '.join(record['missing_outputs'])} (run `dvc push` after `dvc repro`)"
        )
    with_data = bool(record.get("pushed_data"))
    if not with_data:
        say(
            "warning: the worker had no DVC remote to push to: results come without their data "
            "(docs/worker.md, `dvc remote add`)"
        )
    if record.get("experiment"):
        name = record["experiment"]
        ref = local.pull_experiment(repo, remote, name, with_data)
        say(f"==> experiment {name}: pulled (`dvc exp show -A` lists it, `dvc exp apply {name}` applies it)")
        diff = local.metrics_diff(repo, sha, name)
        grids = local.copy_experiment_files(repo, ref, name, record.get("grids", []))
    elif record.get("results_branch"):
        branch = record["results_branch"]
        local.pull_results_branch(repo, remote, branch, with_data)
        say(
            f"==> results branch {branch}: switched to it{' and pulled its data' if with_data else ''} "
            "(`git switch -` goes back)"
        )
        diff = local.metrics_diff(repo, sha)
        grids = [Path(g) for g in record.get("grids", [])]
    else:
        say(f"==> nothing to bring home: every stage was up to date at {sha[:12]}")
        return 0
    say(f"==> dvc metrics diff {sha[:12]}:")
    say(diff.rstrip() or "  no metric changed")
    say("==> sample grids of this run:" if grids else "==> sample grids of this run: none")
    for grid in grids:
        say(f"  {grid}")
    say(scorecard_text(repo, record))
    return 0


def scorecard_text(repo: Path, record: dict) -> str:
    """The card the worker made of its checkout; a worker too old to send one: the card of this
    checkout when it holds the results (a results branch), else a line saying there is none."""
    if record.get("scorecard"):
        return scorecard.Card.from_dict(record["scorecard"]).text()
    if record.get("results_branch"):
        return scorecard.build(repo).text()
    return (
        "==> scorecard: the worker sent none (`dvc exp apply` the experiment, then "
        "`python -m tasks.reporting.scorecard`)"
    )


if __name__ == "__main__":
    sys.exit(main())
