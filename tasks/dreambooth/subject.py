"""Stage encode_subject: the subject's aligned photos -> latent shards, by encode_latents' own code
(same format, same VAE identity in the manifest, same per-shard resumption)."""
from __future__ import annotations

from tasks.common.shards import read_manifest
from tasks.dreambooth.config import EncodeSubjectConfig
from tasks.latent.encode import encode_latents


def encode_subject(subject_dir: str, vae_dir: str, out_dir: str, cfg: EncodeSubjectConfig, *, log=print) -> dict:
    """Encode the subject photos prepare_subject kept; returns the latent manifest."""
    subject = read_manifest(subject_dir)
    if subject["counts"]["written"] == 0:
        raise ValueError(f"{subject_dir} holds no subject photo: see its manifest's rejections")
    return encode_latents(subject_dir, vae_dir, out_dir, resolution=None, flip=cfg.flip, batch_size=cfg.batch_size,
                          device=cfg.device, precision=cfg.precision, num_processes=1, params=cfg.to_dict(),
                          progress=False, log=log)
