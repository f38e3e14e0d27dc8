"""Flow for DVC stage encode_subject: the subject's aligned photos -> latents by the base model's
VAE (encode_latents' code); see tasks/dreambooth/subject.py."""

from __future__ import annotations

from prefect import flow

from flows._stage import run_stage, stage_task
from tasks.dreambooth.config import EncodeSubjectConfig
from tasks.dreambooth.subject import encode_subject as encode
from tasks.reporting.log import get_logger


@stage_task("encode_subject")
def encode_subject_task(subject_dir: str, base_dir: str, out_dir: str, cfg: EncodeSubjectConfig) -> dict:
    """Encode the subject's aligned photos with the base model's VAE; returns counts and the VAE identity."""
    manifest = encode(subject_dir, base_dir, out_dir, cfg, log=get_logger().info)
    return {"counts": manifest["counts"], "vae_identity": manifest["vae"]["identity"]}


@flow(name="encode_subject")
def encode_subject(subject_dir: str, base_dir: str, out_dir: str, params: dict) -> dict:
    cfg = EncodeSubjectConfig.from_params(params, "encode_subject")
    return encode_subject_task(subject_dir, base_dir, out_dir, cfg)


if __name__ == "__main__":
    run_stage(encode_subject, "encode_subject")
