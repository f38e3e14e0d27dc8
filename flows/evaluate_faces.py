"""Flow for DVC stage evaluate_faces: see tasks/evaluation/evaluate.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.evaluation.evaluate import evaluate_faces as evaluate
from tasks.evaluation.faces import EvaluateFacesConfig

evaluate_faces_task = stage_task("evaluate_faces")(evaluate)


@flow(name="evaluate_faces")
def evaluate_faces(
    aligned_dir: str,
    base_dir: str,
    subject_dir: str,
    subject_model_dir: str,
    metrics_path: str,
    out_dir: str,
    params: dict,
) -> dict:
    cfg = EvaluateFacesConfig.from_params(params, "evaluate_faces")
    return evaluate_faces_task(aligned_dir, base_dir, subject_dir, subject_model_dir, metrics_path, out_dir, cfg)


if __name__ == "__main__":
    run_stage(evaluate_faces, "evaluate_faces")
