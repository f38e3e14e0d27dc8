"""Stage fetch_faces: face photos + FFHQ-format metadata into a raw folder.

source: synthetic (drawn offline, exact landmarks) | ffhq (NVlabs' files, verified) | a folder.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows._stage import run_stage
from tasks.faces.stages import fetch_faces_task


@flow(name="fetch_faces")
def fetch_faces(out_dir: str, source: str = "synthetic", val_fraction: float = 0.1, workers: int = 0,
                synthetic: dict[str, Any] | None = None, ffhq: dict[str, Any] | None = None) -> str:
    params = {"source": source, "val_fraction": val_fraction, "workers": workers,
              "synthetic": synthetic, "ffhq": ffhq}
    return fetch_faces_task(out_dir, source, val_fraction, workers, synthetic or {}, ffhq or {}, params)


if __name__ == "__main__":
    run_stage(fetch_faces, "fetch_faces")
