"""Stage encode_subject: the subject's aligned photos -> latent shards, by encode_latents' own code
(same format, same VAE identity in the manifest, same per-shard resumption)."""

from __future__ import annotations

from tasks.dreambooth.base import base_vae_dir
from tasks.dreambooth.config import EncodeSubjectConfig
from tasks.latent.encode import encode_latents
from tasks.shards.dataset import read_manifest


def check_enough_photos(subject: dict, subject_dir: str) -> None:
    """prepare_subject only warns when fewer than `min_photos` photos survive alignment (its output is
    still worth looking at); fine-tuning on them is refused here, naming each rejected photo and why."""
    min_photos = int((subject.get("params") or {}).get("min_photos") or 1)
    kept = subject["counts"]["written"]
    if kept >= min_photos:
        return
    rejected = [f"{r.get('file') or r.get('key')}: {r['reason']}" for r in subject.get("rejected", [])]
    listing = "; ".join(rejected) if rejected else "none rejected: add more photos of the subject"
    raise ValueError(
        f"{subject_dir}: only {kept} subject photo(s) survived alignment, fewer than "
        f"prepare_subject.min_photos={min_photos}. Rejected: {listing}"
    )


def encode_subject(subject_dir: str, base_dir: str, out_dir: str, cfg: EncodeSubjectConfig, *, log=print) -> dict:
    """Encode the subject photos prepare_subject kept with the base model's own autoencoder (`vae/`,
    or `vqvae/` of an LDMPipeline folder); returns the latent manifest."""
    check_enough_photos(read_manifest(subject_dir), subject_dir)
    vae_dir = str(base_vae_dir(base_dir))
    return encode_latents(
        subject_dir,
        vae_dir,
        out_dir,
        resolution=None,
        flip=cfg.flip,
        batch_size=cfg.batch_size,
        device=cfg.device,
        precision=cfg.precision,
        num_processes=1,
        params=cfg.to_dict(),
        progress=False,
        log=log,
    )
