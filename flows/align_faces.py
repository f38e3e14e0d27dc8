"""Stage align_faces: FFHQ alignment of a raw folder into WebDataset shards of PNGs.

Resumes after a kill: finished shards are kept (the DVC out is `persist: true`; see
tasks/faces/work.py for why that is safe).
"""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.faces.config import AlignFacesConfig
from tasks.faces.stages import align_faces_task


@flow(name="align_faces")
def align_faces(raw_dir: str, out_dir: str, params: dict) -> dict:
    config = AlignFacesConfig.from_params(params, "align_faces")
    return align_faces_task(raw_dir, out_dir, config, record=config.to_dict())["counts"]


if __name__ == "__main__":
    run_stage(align_faces, "align_faces")
