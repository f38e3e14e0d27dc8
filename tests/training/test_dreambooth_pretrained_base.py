"""DreamBooth from a pretrained base: a base folder in diffusers' `LDMPipeline` layout
(unet/, vqvae/ a VQModel, scheduler/, as a snapshot of CompVis/ldm-celebahq-256) runs the whole chain
through the stage functions, samples exactly what `LDMPipeline` samples, and a hub id is refused with
the download command.

Everything is tiny and randomly initialised: a 2-level VQModel (16 px -> 3x8x8) and a 2-level UNet."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, LDMPipeline, VQModel

from pipelines.dreambooth import load_subject_pipeline, resolve_base
from pipelines.identity import module_identity
from pipelines.ldm_base import base_layout
from tasks.dreambooth.base import base_identity, base_vae_dir, load_base
from tasks.dreambooth.class_samples import sample_class, shard_seed
from tasks.dreambooth.config import EncodeSubjectConfig, TrainDreamboothConfig
from tasks.dreambooth.subject import encode_subject
from tasks.dreambooth.train import run_training
from tasks.evaluation.faces import load_base_pipeline, model_resolution, untrained_pipeline, vae_round_trip
from tasks.latent.encode import iter_latents
from tasks.shards.dataset import read_manifest, write_manifest
from tests.helpers.dreambooth import SCHEDULE, class_cfg, db_params
from tests.helpers.latents import make_aligned
from tests.helpers.models import tiny_unet

QUIET = dict(log=lambda *_: None)


def make_ldm_base(path: Path, seed: int = 0) -> Path:
    """A tiny diffusers LDMPipeline saved in its own layout (vqvae/, not vae/); the VQModel keeps
    diffusers' default scaling_factor, which LDMPipeline divides by before decoding."""
    torch.manual_seed(seed)
    vqvae = VQModel(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3,
        num_vq_embeddings=16,
        norm_num_groups=4,
        sample_size=16,
    )
    unet = tiny_unet(groups=8, attention=True)
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(**SCHEDULE, clip_sample=False)).save_pretrained(path)
    return path


def make_subject(path: Path, n: int = 4) -> Path:
    """prepare_subject's output, as far as encode_subject reads it: aligned 16 px photos, one split."""
    make_aligned(path, n=n, size=16, shard_size=n, val_fraction=0.0, seed=3)
    manifest = read_manifest(path)
    write_manifest(path, {**manifest, "counts": {**manifest["counts"], "written": n}, "params": {"min_photos": 3}})
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """encode_subject -> sample_class -> train_dreambooth (2 steps) on the LDMPipeline-layout base."""
    root = tmp_path_factory.mktemp("pretrained")
    base = make_ldm_base(root / "pretrained" / "ldm-tiny")
    encode_subject(
        str(make_subject(root / "photos")),
        str(base),
        str(root / "subject"),
        EncodeSubjectConfig(flip=False, batch_size=8, device="cpu", precision="fp32"),
        **QUIET,
    )
    sample_class(str(base), str(root / "class"), str(root / "grid.png"), class_cfg(num_class_samples=4), **QUIET)
    params = db_params(
        training={"num_epochs": 1, "use_ema": False},
        samples={"num_images": 1, "scheduler": "ddim", "num_inference_steps": 2, "seed": 0, "guidance_scale": 2.0},
    )
    run_training(
        str(root / "subject"),
        str(root / "class"),
        str(base),
        str(root / "model"),
        str(root / "ckpt"),
        str(root / "live"),
        str(root / "metrics.json"),
        TrainDreamboothConfig.from_params(params, "train_dreambooth"),
        show_progress=False,
    )
    return root


def test_our_pipeline_samples_what_ldm_pipeline_samples(tmp_path):
    base = make_ldm_base(tmp_path / "base")
    assert base_layout(base) == "ldm" and base_vae_dir(base) == base / "vqvae"
    ours, theirs = load_base(base), LDMPipeline.from_pretrained(str(base))
    theirs.set_progress_bar_config(disable=True)
    assert type(ours.vae).__name__ == "VQModel" and ours.vae.config.scaling_factor == theirs.vqvae.config.scaling_factor
    for steps in (1, 3):
        a = ours(
            batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(7), output_type="np"
        ).images
        b = theirs(
            batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(7), output_type="np"
        ).images
        assert a.shape == b.shape == (2, 16, 16, 3)
        assert np.allclose(a, b, rtol=0, atol=1e-6), np.abs(a - b).max()


def test_the_dreambooth_chain_runs_on_an_ldm_pipeline_base(chain):
    base_dir = chain / "pretrained" / "ldm-tiny"
    base = load_base(base_dir)
    ident = base_identity(base)
    subject, klass = read_manifest(chain / "subject"), read_manifest(chain / "class")
    # DESIGN.md's identity check: subject latents and class samples from this base's VQModel and weights.
    assert subject["vae"]["identity"] == klass["vae"]["identity"] == ident["vae"]
    assert subject["vae"]["class"] == "VQModel" and subject["vae"]["path"] == str(base_dir / "vqvae")
    assert klass["base"]["identity"] == ident["identity"]
    assert subject["latent_shape"] == klass["latent_shape"] == [3, 8, 8]
    # Class samples are the latents LDMPipeline's sampler reaches from the same noise (stored float16, unscaled).
    stored = np.stack([s["mean.npy"] for s in iter_latents(chain / "class" / klass["all_shards"][0])])
    noise = torch.randn((len(stored), 3, 8, 8), generator=torch.Generator().manual_seed(shard_seed(0, 0)))
    z = base(batch_size=len(stored), num_inference_steps=2, latents=noise, output_type="latent").images
    assert np.array_equal(stored, (z / base.vae.config.scaling_factor).numpy().astype(np.float16))

    metrics = json.loads((chain / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["base_identity"] == ident["identity"]
    pipe = load_subject_pipeline(chain / "model")
    assert pipe.has_identifier and type(pipe.vae).__name__ == "VQModel"
    images = pipe(
        batch_size=1,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        guidance_scale=2.0,
    ).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_evaluate_faces_and_a_lora_record_load_the_ldm_pipeline_base(chain):
    base_dir = chain / "pretrained" / "ldm-tiny"
    pipe = load_base_pipeline(base_dir)
    assert model_resolution(pipe) == 16
    photos = [np.full((16, 16, 3), 128, np.uint8)] * 2
    assert vae_round_trip(pipe, photos)[0].shape == (16, 16, 3)  # a VQModel has no posterior: its latents
    assert untrained_pipeline(pipe, seed=0)(batch_size=1, num_inference_steps=1, output_type="np").images.shape == (
        1,
        16,
        16,
        3,
    )
    record = {"base_dir": str(base_dir), "base_unet_identity": module_identity(pipe.unet)}
    assert module_identity(resolve_base(chain / "model", record).vae) == module_identity(pipe.vae)


@pytest.mark.parametrize("name", ["CompVis/ldm-celebahq-256", "/no/such/folder"])
def test_a_hub_id_is_refused_with_the_download_command(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_base(name)
    msg = str(err.value)
    assert "\n" not in msg and "is not a folder" in msg
    command = name if name.startswith("CompVis") else "CompVis/ldm-celebahq-256"  # the example when it is no hub id
    assert f"`huggingface-cli download {command} --local-dir models/pretrained/{command.split('/')[1]}`" in msg
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        encode_subject(
            str(make_subject(tmp_path / "photos")),
            name,
            str(tmp_path / "out"),
            EncodeSubjectConfig(flip=False, batch_size=8, device="cpu", precision="fp32"),
            **QUIET,
        )


def test_the_lock_check_reads_a_templated_base_as_dvc_does(tmp_path):
    """dvc.lock records `${dreambooth_base}` resolved, in the cmd and the dep; so must the check."""
    import yaml

    from tasks.tracking.deps import lock_problems

    (tmp_path / "params.yaml").write_text("dreambooth_base: models/pretrained/x\nsample_class:\n  seed: 0\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  sample_class:\n    cmd: python -m flows.sample_class --base-dir "
        "${dreambooth_base}\n    deps:\n      - ${dreambooth_base}\n"
        "    params:\n      - sample_class\n"
    )
    lock = {
        "schema": "2.0",
        "stages": {
            "sample_class": {
                "cmd": "python -m flows.sample_class --base-dir models/pretrained/x",
                "deps": [{"path": "models/pretrained/x", "md5": "x.dir"}],
                "params": {"params.yaml": {"dreambooth_base": "models/pretrained/x", "sample_class": {"seed": 0}}},
            }
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert lock_problems(tmp_path) == []
    (tmp_path / "params.yaml").write_text("dreambooth_base: models/ldm\nsample_class:\n  seed: 0\n")
    assert lock_problems(tmp_path) == [
        "sample_class: cmd differs from the one dvc.lock recorded",
        "sample_class: dep models/ldm is new since dvc.lock",
        "sample_class: dep models/pretrained/x is gone since dvc.lock",
    ]
