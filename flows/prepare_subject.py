"""Stage prepare_subject: the DreamBooth subject's photos, detected and aligned like align_faces.

source: synthetic (an identity held out of the base set, varied pose, lighting, background) or a
folder of photos of one person. The manifest lists which photos were used and which were
rejected and why; fewer than `min_photos` survivors is a warning.
"""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.faces.config import PrepareSubjectConfig
from tasks.faces.stages import align_faces_task, fetch_subject_task, subject_report_task


@flow(name="prepare_subject")
def prepare_subject(raw_dir: str, out_dir: str, params: dict) -> dict:
    config = PrepareSubjectConfig.from_params(params, "prepare_subject")
    record = config.to_dict()  # what the manifests record as the params that made them
    fetch_subject_task(raw_dir, config, record)
    align_faces_task(raw_dir, out_dir, config.align(), record=record, list_used=True)
    return subject_report_task(out_dir, config.min_photos)


if __name__ == "__main__":
    run_stage(prepare_subject, "prepare_subject")
