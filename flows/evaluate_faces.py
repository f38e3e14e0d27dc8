"""Flow for DVC stage evaluate_faces: dlib face metrics of the base (and subject) model against
real validation faces, with real-vs-real floors and an untrained-model reference; see
tasks/evaluation/faces.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.evaluation.faces import EvaluateFacesConfig
from tasks.evaluation.stages import evaluate_faces_task


@flow(name="evaluate_faces")
def evaluate_faces(aligned_dir: str, base_dir: str, subject_dir: str, subject_model_dir: str, metrics_path: str,
                   out_dir: str, params: dict) -> dict:
    cfg = EvaluateFacesConfig.from_params(params, "evaluate_faces")
    return evaluate_faces_task(aligned_dir, base_dir, subject_dir, subject_model_dir, metrics_path, out_dir, cfg)


if __name__ == "__main__":
    run_stage(evaluate_faces, "evaluate_faces")
