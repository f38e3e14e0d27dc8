"""Stage fetch_faces: face photos + FFHQ-format metadata into a raw folder.

source: synthetic (drawn offline, exact landmarks) | ffhq (NVlabs' files, verified) | a folder.
"""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.faces.config import FetchFacesConfig
from tasks.faces.stages import fetch_faces_task


@flow(name="fetch_faces")
def fetch_faces(out_dir: str, params: dict) -> str:
    return fetch_faces_task(out_dir, FetchFacesConfig.from_params(params, "fetch_faces"))


if __name__ == "__main__":
    run_stage(fetch_faces, "fetch_faces")
