"""Flow for DVC stage prepare_subject: the DreamBooth subject's photos, detected and aligned like
align_faces, with a report of used and rejected photos; see tasks/faces/subject.py.

source: synthetic (an identity held out of the base set, varied pose, lighting, background) or a
folder of photos of one person. Fewer than `min_photos` survivors is a warning.
"""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.faces.aligning import align_faces
from tasks.faces.config import PrepareSubjectConfig
from tasks.faces.subject import fetch_subject, write_subject_report
from tasks.reporting.log import get_logger


@stage_task("fetch_subject")
def fetch_subject_task(out_dir: str, config: PrepareSubjectConfig, record: dict) -> str:
    return fetch_subject(out_dir, config, record, get_logger())


@stage_task("align_faces")
def align_subject_task(raw_dir: str, out_dir: str, config: PrepareSubjectConfig, record: dict) -> dict:
    return align_faces(raw_dir, out_dir, config.align(), record=record, log=get_logger(), list_used=True)


@stage_task("subject_report")
def subject_report_task(out_dir: str, min_photos: int) -> dict:
    return write_subject_report(out_dir, min_photos, get_logger())


@flow(name="prepare_subject")
def prepare_subject(raw_dir: str, out_dir: str, params: dict) -> dict:
    config = PrepareSubjectConfig.from_params(params, "prepare_subject")
    record = config.to_dict()  # what the manifests record as the params that made them
    fetch_subject_task(raw_dir, config, record)
    align_subject_task(raw_dir, out_dir, config, record)
    return subject_report_task(out_dir, config.min_photos)


if __name__ == "__main__":
    run_stage(prepare_subject, "prepare_subject")
