"""Stage align_faces: FFHQ alignment of a raw folder into WebDataset shards of PNGs.

Resumes after a kill: finished shards are kept (the DVC out is `persist: true`; see
tasks/faces/work.py for why that is safe).
"""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.faces.stages import align_faces_task


@flow(name="align_faces")
def align_faces(raw_dir: str, out_dir: str, landmarks: str = "metadata", output_size: int = 256,
                transform_size: int = 4096, enable_padding: bool = True, min_face_size: float = 0,
                shard_size: int = 1000, workers: int = 0, device: str = "cpu", batch_size: int = 8,
                dlib_upsample: int = 1) -> dict:
    params = dict(landmarks=landmarks, output_size=output_size, transform_size=transform_size,
                  enable_padding=enable_padding, min_face_size=min_face_size, shard_size=shard_size,
                  workers=workers, device=device, batch_size=batch_size, dlib_upsample=dlib_upsample)
    manifest = align_faces_task(raw_dir, out_dir, **params, params=params)
    return manifest["counts"]


if __name__ == "__main__":
    run_stage(align_faces, "align_faces")
