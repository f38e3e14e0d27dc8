"""Stage prepare_subject: the DreamBooth subject's photos, detected and aligned like align_faces.

source: synthetic (an identity held out of the base set, varied pose, lighting, background) or a
folder of photos of one person. The manifest lists which photos were used and which were
rejected and why; fewer than `min_photos` survivors is a warning.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows._stage import run_stage
from tasks.faces.stages import align_faces_task, fetch_subject_task, subject_report_task


@flow(name="prepare_subject")
def prepare_subject(raw_dir: str, out_dir: str, source: str = "synthetic",
                    synthetic: dict[str, Any] | None = None, landmarks: str = "dlib", output_size: int = 256,
                    transform_size: int = 4096, enable_padding: bool = True, min_face_size: float = 0,
                    min_photos: int = 3, workers: int = 0, device: str = "cpu", batch_size: int = 8,
                    dlib_upsample: int = 1) -> dict:
    if source != "synthetic" and landmarks == "metadata":
        raise ValueError("a folder of photos has no landmarks in metadata: use landmarks: dlib or face_alignment")
    align = dict(landmarks=landmarks, output_size=output_size, transform_size=transform_size,
                 enable_padding=enable_padding, min_face_size=min_face_size, shard_size=10_000,
                 workers=workers, device=device, batch_size=batch_size, dlib_upsample=dlib_upsample)
    params = {"source": source, "synthetic": synthetic, "min_photos": min_photos, **align}
    fetch_subject_task(raw_dir, source, synthetic or {}, params, workers)
    align_faces_task(raw_dir, out_dir, **align, params=params, list_used=True)
    return subject_report_task(out_dir, min_photos)


if __name__ == "__main__":
    run_stage(prepare_subject, "prepare_subject")
