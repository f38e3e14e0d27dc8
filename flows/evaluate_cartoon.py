"""Flow for DVC stage evaluate_cartoon: see tasks/cartoon/evaluate.py."""

from prefect import flow

from flows._stage import run_stage
from tasks.cartoon.evaluate import EvaluateCartoonConfig, evaluate_cartoon_task


@flow(name="evaluate_cartoon")
def evaluate_cartoon(
    model_dir: str,
    classifier_dir: str,
    classifier_metrics: str,
    shard_dir: str,
    out_dir: str,
    metrics_path: str,
    attributes_path: str,
    params: dict,
) -> str:
    cfg = EvaluateCartoonConfig.from_params(params, "evaluate_cartoon")
    return evaluate_cartoon_task(
        model_dir, classifier_dir, classifier_metrics, shard_dir, out_dir, metrics_path, attributes_path, cfg
    )


if __name__ == "__main__":
    run_stage(evaluate_cartoon, "evaluate_cartoon")
