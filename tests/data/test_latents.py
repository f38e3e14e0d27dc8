"""Latent track: VAE identity and sources, latent shard encoding (round-trip, manifest, resume), loader."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import tasks.latent.encode as enc
from tasks.latent.config import EncodeLatentsConfig, TrainVaeConfig
from tasks.latent.encode import iter_latents
from tasks.latent.images import load_split, to_model_input
from tasks.latent.loader import latent_loader
from tasks.latent.train_vae import prepare_vae
from tasks.latent.vae import (
    VAESourceError,
    load_pretrained,
    load_vae,
    posterior_moments,
    vae_identity,
)
from tasks.shards.dataset import PROGRESS, read_manifest
from tests.helpers.configs import stage_config
from tests.helpers.latents import TINY_VAE, encode_latents, make_aligned, save_tiny_vae


def vae_config(**overrides) -> TrainVaeConfig:
    return stage_config(TrainVaeConfig, "train_vae", **{"device": "cpu", **overrides})


torch.set_num_threads(1)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    return make_aligned(tmp_path_factory.mktemp("aligned"))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_tiny_vae(tmp_path_factory.mktemp("vae"), seed=0)


def _count_encoder_calls(monkeypatch) -> list:
    calls: list = []
    real = enc.encode_batch

    def counting(vae, images, device, precision):
        calls.append(len(images))
        return real(vae, images, device, precision)

    monkeypatch.setattr(enc, "encode_batch", counting)
    return calls


def test_latent_shards_round_trip_mean_and_std_as_float16(aligned, vae_dir, tmp_path):
    out = tmp_path / "latents"
    manifest = encode_latents(
        str(aligned),
        str(vae_dir),
        str(out),
        resolution=32,
        flip=True,
        batch_size=4,
        progress=False,
        params={"resolution": 32},
    )
    vae = load_vae(vae_dir)
    keys, images = load_split(aligned, "train", 32)
    with torch.no_grad():
        mean, std = posterior_moments(vae, to_model_input(images))
        mean_f, _ = posterior_moments(vae, to_model_input(images[:, :, ::-1]))
    by_key = {}
    for name in manifest["splits"]["train"]["shards"]:
        for s in iter_latents(out / name):
            by_key[s["__key__"]] = s
    assert sorted(by_key) == sorted(keys)
    for i, key in enumerate(keys):
        s = by_key[key]
        for name in ("mean.npy", "std.npy", "mean_flip.npy", "std_flip.npy"):
            assert s[name].dtype == np.float16 and s[name].shape == (4, 16, 16)
        # float16 keeps ~3 significant digits; that is the whole loss of the round trip
        np.testing.assert_allclose(s["mean.npy"], mean[i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(s["std.npy"], std[i].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(s["mean_flip.npy"], mean_f[i].numpy(), rtol=2e-3, atol=2e-3)
        assert s["json"]["key"] == key
        assert (s["std.npy"] > 0).all()

    on_disk = read_manifest(out)
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["kind"] == "faces_latents"
    assert on_disk["vae"]["identity"] == vae_identity(vae)
    assert on_disk["vae"]["class"] == "PatchAutoencoderKL"
    assert on_disk["vae"]["scaling_factor"] == pytest.approx(0.5)
    assert on_disk["latent_shape"] == [4, 16, 16] and on_disk["dtype"] == "float16" and on_disk["flip"] is True
    aligned_manifest = read_manifest(aligned)
    for split in ("train", "val"):
        assert on_disk["counts"][split] == aligned_manifest["splits"][split]["count"]
        assert sum(on_disk["splits"][split]["shard_counts"]) == on_disk["counts"][split]
        assert on_disk["splits"][split]["shards"] == aligned_manifest["splits"][split]["shards"]
    assert on_disk["counts"]["images"] == 24
    assert on_disk["params"] == {"resolution": 32}
    assert not (out / PROGRESS).exists()
    assert not list(out.glob("*.tmp"))


def test_kill_and_resume_encodes_only_the_missing_shards(aligned, vae_dir, tmp_path, monkeypatch):
    calls = _count_encoder_calls(monkeypatch)
    reference = tmp_path / "reference"
    encode_latents(str(aligned), str(vae_dir), str(reference), resolution=32, batch_size=4, progress=False)
    aligned_shards = [n for sp in read_manifest(aligned)["splits"].values() for n in sp["shards"]]
    assert len(aligned_shards) >= 4

    class Killed(Exception):
        pass

    finished: list[str] = []

    def kill_after_two(name: str) -> None:
        finished.append(name)
        if len(finished) == 2:
            raise Killed

    out = tmp_path / "latents"
    calls.clear()
    with pytest.raises(Killed):
        encode_latents(
            str(aligned),
            str(vae_dir),
            str(out),
            resolution=32,
            batch_size=4,
            progress=False,
            shard_callback=kill_after_two,
        )
    assert not (out / "manifest.json").exists()  # an unfinished stage has no manifest
    (out / "train-000099.tar.tmp").write_bytes(b"half a shard")  # what a kill mid-write leaves

    counts = {n: sum(1 for _ in iter_latents(reference / n)) for n in aligned_shards}  # faces per shard
    expected_calls = sum(-(-c // 4) for n, c in counts.items() if n not in finished)
    calls.clear()
    encode_latents(str(aligned), str(vae_dir), str(out), resolution=32, batch_size=4, progress=False)
    assert len(calls) == expected_calls
    assert sum(calls) == sum(c for n, c in counts.items() if n not in finished)
    assert not (out / "train-000099.tar.tmp").exists()
    # The resumed result is byte-identical to an uninterrupted run.
    for name in read_manifest(reference)["all_shards"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    ref_m, out_m = read_manifest(reference), read_manifest(out)
    for key in ("vae", "splits", "counts", "fingerprint"):
        assert ref_m[key] == out_m[key]

    calls.clear()  # finished: a third run encodes nothing
    encode_latents(str(aligned), str(vae_dir), str(out), resolution=32, batch_size=8, progress=False)
    assert calls == []


def test_vae_identity_is_the_cache_key(aligned, vae_dir, tmp_path, monkeypatch):
    same = save_tiny_vae(tmp_path / "same", seed=0)
    other = save_tiny_vae(tmp_path / "other", seed=1)
    rescaled = save_tiny_vae(tmp_path / "rescaled", seed=0, scaling_factor=0.7)
    ids = {
        n: vae_identity(load_vae(p))
        for n, p in {"a": vae_dir, "a_again": vae_dir, "same": same, "other": other, "rescaled": rescaled}.items()
    }
    assert ids["a"] == ids["a_again"] == ids["same"]
    assert ids["other"] != ids["a"] and ids["rescaled"] != ids["a"]

    calls = _count_encoder_calls(monkeypatch)
    out = tmp_path / "latents"
    encode_latents(str(aligned), str(vae_dir), str(out), resolution=32, batch_size=8, progress=False)
    full = len(calls)
    calls.clear()  # the same VAE (another copy of it): nothing to encode
    encode_latents(str(aligned), str(same), str(out), resolution=32, batch_size=8, progress=False)
    assert calls == []
    calls.clear()  # a different VAE: every shard again, and the manifest says whose latents they are
    m = encode_latents(str(aligned), str(other), str(out), resolution=32, batch_size=8, progress=False)
    assert len(calls) == full
    assert m["vae"]["identity"] == ids["other"]
    calls.clear()  # params that change no byte (batch size, processes) keep the cache
    encode_latents(str(aligned), str(other), str(out), resolution=32, batch_size=3, progress=False)
    assert calls == []


def test_trained_tiny_vae_beats_the_psnr_floor(tmp_path):
    """The floor: a bilinear down-up by the VAE's own factor (f=2 here) plus 1.5 dB. That baseline is
    what a latent could hold by storing an averaged thumbnail (3 x 8 x 8 numbers; the latent has
    4 x 8 x 8), so a VAE below it has learned nothing a resize would not give; and 6 dB above the
    flat (mean colour) image. An untrained VAE is far below both, so the floor fails whenever
    training does not really work."""
    aligned = make_aligned(tmp_path / "aligned", n=96, size=16, shard_size=16)
    training = {
        "max_train_steps": 400,
        "learning_rate": 3e-3,
        "lr_warmup_steps": 5,
        "log_every_steps": 100,
        "checkpointing_steps": 200,
    }
    metrics = prepare_vae(
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "m.json"),
        str(tmp_path / "live"),
        vae_config(resolution=16, model=TINY_VAE, training=training, eval_batch_size=32),
        checkpoint_dir=str(tmp_path / "ckpt"),
        progress=False,
        log=lambda *_: None,
    )
    assert metrics["downsample_factor"] == 2
    assert metrics["psnr_val_db"] > metrics["psnr_val_bilinear_db"] + 1.5, metrics
    assert metrics["psnr_val_db"] > metrics["psnr_val_flat_db"] + 6.0, metrics
    assert json.loads((tmp_path / "m.json").read_text())["psnr_val_db"] == metrics["psnr_val_db"]
    # Scaling factor measured on the training latents (1 / std) and saved with the VAE.
    saved = load_vae(tmp_path / "vae")
    assert metrics["scaling_factor_source"] == "measured"
    assert saved.config.scaling_factor == pytest.approx(metrics["scaling_factor"])
    assert metrics["vae_identity"] == vae_identity(saved)
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "mse.tsv").is_file()
    assert list((tmp_path / "live" / "plots" / "images" / "samples").glob("*.png"))  # faces over reconstructions


def test_pretrained_config_scaling_factor_is_kept(aligned, vae_dir, tmp_path):
    live = tmp_path / "live"
    metrics = prepare_vae(
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "m.json"),
        str(live),
        vae_config(source=str(vae_dir), resolution=32),
        progress=False,
        log=lambda *_: None,
    )
    assert metrics["scaling_factor"] == 0.5 and metrics["scaling_factor_source"] == "config"
    assert metrics["scaling_factor_measured"] > 0
    assert vae_identity(load_vae(tmp_path / "vae")) == vae_identity(load_vae(vae_dir))
    # No training curve, but the plots folder dvc.yaml declares holds the evaluation (found by the
    # ffhq256 profile chain: `dvc repro` failed on the missing folder).
    row = (live / "plots" / "metrics" / "train_vae" / "psnr_val_vae_db.tsv").read_text().splitlines()
    assert row[0].split("\t") == ["step", "psnr_val_vae_db"] and float(row[1].split("\t")[1]) == metrics["psnr_val_db"]


def test_a_psnr_on_too_few_validation_faces_is_flagged_unreliable(aligned, vae_dir, tmp_path, caplog):
    run = lambda n: prepare_vae(  # noqa: E731
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "m.json"),
        None,
        vae_config(source=str(vae_dir), resolution=32, min_val_images=n),
        progress=False,
        log=lambda *_: None,
    )
    few = run(1000)
    assert few["reliable"] is False and few["target_met"] is False
    assert json.loads((tmp_path / "m.json").read_text())["reliable"] is False
    assert f"measured on only {few['val_images']} validation faces" in caplog.text and "reliable false" in caplog.text
    assert run(few["val_images"])["reliable"] is True


def test_hub_vae_offline_fails_fast_with_how_to(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(VAESourceError) as err:
        load_pretrained("stabilityai/sd-vae-ft-mse")
    assert time.perf_counter() - t0 < 10
    message = str(err.value)
    assert "huggingface-cli download stabilityai/sd-vae-ft-mse" in message
    assert "train_vae.source" in message
    with pytest.raises(VAESourceError, match="neither 'train', an existing folder, nor a hub id"):
        load_pretrained("no/such/local/folder")


def test_latent_loader_is_deterministic_and_draws_fresh_noise(aligned, vae_dir, tmp_path):
    out = tmp_path / "latents"
    encode_latents(str(aligned), str(vae_dir), str(out), resolution=32, flip=True, batch_size=8, progress=False)

    def epoch(e):
        return list(latent_loader(out, "train", batch_size=4, seed=1, epoch=e))

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert len(a) == len(latent_loader(out, "train", batch_size=4)) >= 2
    for x, y in zip(a, b):
        assert x["key"] == y["key"] and torch.equal(x["latent"], y["latent"])
    z0 = {k: z for bt in a for k, z in zip(bt["key"], bt["latent"])}
    z1 = {k: z for bt in c for k, z in zip(bt["key"], bt["latent"])}
    common = set(z0) & set(z1)
    assert common and all(not torch.equal(z0[k], z1[k]) for k in common)
    flips = [f for bt in a + c for f in bt["flipped"].tolist()]
    assert any(flips) and not all(flips)
    # z is a draw around the stored mean: within a few stds
    bt = a[0]
    assert (bt["latent"] - bt["mean"]).abs().max() < 10


def test_stage_tasks_run_without_a_prefect_server(aligned, vae_dir, tmp_path):
    from flows.encode_latents import encode_latents_task
    from flows.train_vae import train_vae_task

    m = train_vae_task.fn(
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "vae.json"),
        str(tmp_path / "live"),
        None,
        vae_config(source=str(vae_dir), resolution=32),
    )
    assert m["vae_identity"] == vae_identity(load_vae(vae_dir))
    # A pretrained VAE's picture: faces over their round trips, where dvc.yaml declares the images.
    grid = tmp_path / "live" / "plots" / "images" / "samples" / "reconstructions.png"
    width, height = Image.open(grid).size
    assert height == 2 * 32 and width % 32 == 0 and width > 0  # a row of faces, a row of round trips
    out = encode_latents_task.fn(
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "latents"),
        stage_config(EncodeLatentsConfig, "encode_latents", batch_size=8, flip=False, device="cpu"),
    )
    assert out["vae_identity"] == m["vae_identity"] and out["latent_shape"] == [4, 16, 16]  # resolution from the VAE
    assert out["counts"]["images"] == 24


def test_a_vq_model_source_encodes_deterministic_latents(aligned, tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    VQModel(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3,
        num_vq_embeddings=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=1.0,
    ).save_pretrained(tmp_path / "pipe" / "vqvae")
    metrics = prepare_vae(
        str(aligned),
        str(tmp_path / "vae"),
        str(tmp_path / "m.json"),
        None,
        vae_config(source=str(tmp_path / "pipe"), resolution=32),
        progress=False,
        log=lambda *_: None,
    )  # a pipeline folder: its vqvae/ is found
    assert metrics["scaling_factor"] == 1.0 and metrics["scaling_factor_source"] == "config"
    m = encode_latents(str(aligned), str(tmp_path / "vae"), str(tmp_path / "latents"), batch_size=8, progress=False)
    assert m["vae"]["class"] == "VQModel" and m["latent_shape"] == [3, 16, 16]
    s = next(iter_latents(tmp_path / "latents" / m["all_shards"][0]))
    assert s["std.npy"].dtype == np.float16 and not s["std.npy"].any() and s["mean.npy"].any()
