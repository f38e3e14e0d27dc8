"""Face track: FFHQ ingestion, FFHQ-style alignment, DreamBooth subject preparation.

Kept light on purpose: importing `tasks.faces` (or any module of it but `stages`) pulls in
neither prefect nor torch, so the spawned worker processes of the alignment pool start fast.
The Prefect tasks live in `tasks.faces.stages`.
"""
from tasks.faces.align import align_face, ffhq_quad

__all__ = ["align_face", "ffhq_quad"]
