"""Flow for DVC stage fetch_faces: synthetic photos, FFHQ or a folder of photos; see tasks/faces/fetch.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.faces.config import FetchFacesConfig
from tasks.faces.fetch import fetch_faces as fetch
from tasks.reporting.log import get_logger


@stage_task("fetch_faces")
def fetch_faces_task(out_dir: str, config: FetchFacesConfig) -> str:
    return fetch(out_dir, config, get_logger())


@flow(name="fetch_faces")
def fetch_faces(out_dir: str, params: dict) -> str:
    return fetch_faces_task(out_dir, FetchFacesConfig.from_params(params, "fetch_faces"))


if __name__ == "__main__":
    run_stage(fetch_faces, "fetch_faces")
