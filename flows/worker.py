"""The flow a GPU worker runs: check out a revision, dvc pull, repro (or exp run), dvc push, and
publish the metrics as a Prefect artifact. Deployed by prefect.yaml; runnable by hand too:

    python -m flows.worker --repo-url https://git.example/facediff.git --revision main \
        --profile configs/cartoon_seed.yaml
"""
from __future__ import annotations

import argparse
import json

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.worker import checkout, collect_metrics, pull, push, reproduce


def metrics_markdown(revision: str, metrics: dict) -> str:
    lines = [f"# Metrics at `{revision}`", "", "| file | metric | value |", "| --- | --- | --- |"]
    for path, values in sorted(metrics.items()):
        flat = values if isinstance(values, dict) else {"value": values}
        for name, value in sorted(flat.items()):
            lines.append(f"| {path} | {name} | {json.dumps(value)} |")
    return "\n".join(lines)


@flow(name="repro-on-worker")
def repro_on_worker(repo_url: str, revision: str = "main", targets: list[str] | None = None,
                    profile: str | None = None, set_params: list[str] | None = None,
                    experiment: bool = False, workdir: str = "~/facediff-runs") -> dict:
    repo = checkout(repo_url, revision, workdir)
    pull(repo)
    reproduce(repo, targets or [], profile, set_params or [], experiment)
    push(repo)
    metrics = collect_metrics(repo)
    create_markdown_artifact(metrics_markdown(revision, metrics), key="facediff-metrics",
                             description=f"dvc metrics at {revision}")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo-url", required=True)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--target", action="append", dest="targets", help="stage to repro (repeatable)")
    parser.add_argument("--profile", help="configs/X.yaml merged into params.yaml first")
    parser.add_argument("--set-param", action="append", dest="set_params", help="key=value (with --experiment)")
    parser.add_argument("--experiment", action="store_true", help="dvc exp run instead of dvc repro")
    parser.add_argument("--workdir", default="~/facediff-runs")
    args = parser.parse_args()
    print(json.dumps(repro_on_worker(**vars(args)), indent=2))


if __name__ == "__main__":
    main()
