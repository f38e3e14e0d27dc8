"""Flow for DVC stage encode_subject: the subject's aligned photos -> latent shards by the base
model's VAE; see tasks/dreambooth/subject.py."""
from __future__ import annotations

from prefect import flow

from flows._stage import run_stage
from tasks.dreambooth.config import EncodeSubjectConfig
from tasks.dreambooth.stages import encode_subject_task


@flow(name="encode_subject")
def encode_subject(subject_dir: str, vae_dir: str, out_dir: str, params: dict) -> dict:
    cfg = EncodeSubjectConfig.from_params(params, "encode_subject")
    return encode_subject_task(subject_dir, vae_dir, out_dir, cfg)


if __name__ == "__main__":
    run_stage(encode_subject, "encode_subject")
