"""Flow for DVC stage align_faces: NVlabs' FFHQ alignment into shards, resumable per shard; see
tasks/faces/aligning.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.faces.aligning import align_faces as align
from tasks.faces.config import AlignFacesConfig
from tasks.reporting.log import get_logger


@stage_task("align_faces")
def align_faces_task(raw_dir: str, out_dir: str, config: AlignFacesConfig, **options) -> dict:
    return align(raw_dir, out_dir, config, log=get_logger(), **options)


@flow(name="align_faces")
def align_faces(raw_dir: str, out_dir: str, params: dict) -> dict:
    config = AlignFacesConfig.from_params(params, "align_faces")
    return align_faces_task(raw_dir, out_dir, config, record=config.to_dict())["counts"]


if __name__ == "__main__":
    run_stage(align_faces, "align_faces")
