"""Tests that check what they claim: the training side.

Each test here fails when one named one-line bug is planted:
- the engine saves the live weights instead of the EMA weights;
- train_ldm feeds the UNet latents without the VAE scaling factor;
- DreamBooth's prior-loss weight is zero or ignored where the loss is called;
- a LoRA adapter's weights are not applied when the model is loaded (checked without an identifier,
  so the identifier's embedding cannot make the model differ from its base on its own).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tasks.training.engine import noise_seed, train
from tests.helpers.configs import stage_config
from tests.helpers.dreambooth import db_params, train_dreambooth
from tests.helpers.models import TINY_LDM_MODEL as TINY_UNET
from tests.helpers.training import tiny_spec, train_config

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- EMA


def _ema_decay(step: int, decay: float) -> float:
    """diffusers' EMAModel decay at optimization step `step` (1-based; no warmup, update_after_step 0)."""
    k = max(0, step - 1)
    return 0.0 if k <= 0 else min((1 + k) / (10 + k), decay)


def test_the_saved_model_holds_the_ema_weights_not_the_live_ones(tmp_path):
    saved: dict = {}
    spec = tiny_spec(saved)
    build = spec.build_model
    trained: dict = {}

    def build_and_keep():
        trained["model"] = build()
        return trained["model"]

    spec.build_model = build_and_keep
    shadow: dict = {}

    def follow_ema(step):
        # The engine steps the EMA before this callback: recompute it here from the live weights.
        live = {k: v.detach().clone() for k, v in trained["model"].named_parameters()}
        d = _ema_decay(step, 0.9)  # 0 at step 1: the EMA starts as the weights after the first step
        if not shadow:
            assert d == 0.0
            shadow.update(live)
        for k, p in live.items():
            shadow[k] = shadow[k] - (1 - d) * (shadow[k] - p)

    cfg = train_config(num_epochs=2, ema_decay=0.9, learning_rate=3e-2, checkpointing_steps=100)
    summary = train(
        spec,
        cfg,
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "c"),
        live_dir=str(tmp_path / "l"),
        run_id="ema",
        show_progress=False,
        step_callback=follow_ema,
    )
    assert summary["steps"] == 8
    live = dict(trained["model"].named_parameters())
    # EMA and live weights are clearly apart (else the test could not tell them apart).
    gap = max((shadow[k] - live[k].detach()).abs().max().item() for k in live)
    assert gap > 1e-3, gap
    for k in live:
        torch.testing.assert_close(saved["state"][k], shadow[k], rtol=0, atol=1e-6, msg=f"{k}: not the EMA weights")
    assert any(not torch.allclose(saved["state"][k], p.detach(), atol=1e-4) for k, p in live.items())
    # And the live weights are back in the model after saving (the EMA was swapped in only to save).
    from diffusers import UNet2DModel

    on_disk = UNet2DModel.from_pretrained(tmp_path / "m").state_dict()
    for k in live:
        torch.testing.assert_close(on_disk[k], shadow[k], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- LDM scale


def test_train_ldm_feeds_the_unet_latents_scaled_by_the_manifest_factor(latents, tmp_path):  # noqa: F811
    from tasks.latent.config import TrainLdmConfig
    from tasks.latent.encode import iter_latents
    from tasks.latent.train import ldm_spec
    from tasks.shards.dataset import read_manifest

    manifest = read_manifest(latents / "latents")
    scale = float(manifest["vae"]["scaling_factor"])
    assert scale == pytest.approx(0.5)  # not 1: a missing factor changes the numbers
    config = stage_config(
        TrainLdmConfig,
        "train_ldm",
        num_processes=1,
        data={"batch_size": 4},
        model=TINY_UNET,
        training={
            "seed": 0,
            "num_epochs": 1,
            "max_train_steps": 1,
            "num_train_timesteps": 100,
            "samples_every_epochs": 0,
            "use_ema": False,
        },
        samples={"num_images": 0},
    )
    spec = ldm_spec(str(latents / "latents"), str(latents / "vae"), config)
    seen = {}
    predict = spec.predict

    def spy(m, x, t, c):
        seen["x"], seen["t"] = x.detach().clone(), t.clone()
        return predict(m, x, t, c)

    spec.predict = spy
    cfg = config.training
    train(
        spec,
        cfg,
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "c"),
        live_dir=str(tmp_path / "l"),
        run_id="scale",
        show_progress=False,
    )

    # The first batch as the loader yields it: raw latents (mean + std * eps) of the stored posteriors.
    batch = next(iter(spec.make_loader(0, 0, 1)))
    stored = {}
    for name in manifest["splits"]["train"]["shards"]:
        for s in iter_latents(latents / "latents" / name):
            stored[s["__key__"]] = s
    for key, mean, flipped in zip(batch["key"], batch["mean"], batch["flipped"]):
        want = stored[key]["mean_flip.npy" if flipped else "mean.npy"].astype("float32")
        assert torch.equal(mean, torch.from_numpy(want)), key  # the loader does not scale
    # What reached the UNet: x_t = sqrt(a) * (scale * z) + sqrt(1 - a) * noise.
    g = torch.Generator().manual_seed(noise_seed(cfg.seed, 0, 0))
    x0 = batch["latent"] * scale
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, cfg.num_train_timesteps, (x0.shape[0],), generator=g)
    assert torch.equal(seen["t"], t)
    a = cfg.noise_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], a.sqrt() * x0 + (1 - a).sqrt() * noise, rtol=0, atol=1e-5)
    unscaled = a.sqrt() * batch["latent"] + (1 - a).sqrt() * noise
    assert not torch.allclose(seen["x"], unscaled, atol=1e-3)


# ----------------------------------------------------------------------------------------- DreamBooth prior weight


@pytest.mark.parametrize("weight", [0.25, 3.0])
def test_dreambooth_loss_is_instance_plus_weight_times_prior(world, tmp_path, weight):  # noqa: F811
    from tasks.dreambooth.config import TrainDreamboothConfig
    from tasks.dreambooth.train import dreambooth_spec

    params = db_params(prior_loss_weight=weight, training={"num_epochs": 1, "max_train_steps": 1})
    cfg = TrainDreamboothConfig.from_params(params, "train_dreambooth")
    spec, _ = dreambooth_spec(str(world / "subject"), str(world / "class"), str(world / "base"), cfg, cfg.training)
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(4, 4, 8, 8, generator=g)
    loss, parts = spec.loss(pred, target, {"labels": None, "n_instance": 2})
    instance, prior = F.mse_loss(pred[:2], target[:2]), F.mse_loss(pred[2:], target[2:])
    assert loss.item() == pytest.approx((instance + weight * prior).item(), rel=1e-6)
    assert parts["prior_loss"].item() == pytest.approx(prior.item(), rel=1e-6)
    # The gradient on a class row is the weight times what it is at weight 1.
    loss.backward()
    want = weight * 2 * (pred[2:] - target[2:]).detach() / pred[2:].numel()
    torch.testing.assert_close(pred.grad[2:], want, rtol=1e-5, atol=1e-8)

    # Through a training step: the logged loss is instance + weight * prior.
    _ = train_dreambooth(world, tmp_path, params)
    curves = tmp_path / "live" / "plots" / "metrics" / "train"

    def last(name):
        header, *rows = (curves / f"{name}.tsv").read_text().splitlines()
        return float(rows[-1].split("\t")[header.split("\t").index(name)])

    assert last("prior_loss") > 0
    assert last("loss") == pytest.approx(last("instance_loss") + weight * last("prior_loss"), rel=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["prior_loss_weight"] == weight


# ----------------------------------------------------------------------------------------- LoRA applied


def test_a_lora_adapter_without_identifier_changes_the_model(world, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from pipelines import LatentDiffusionPipeline
    from pipelines.dreambooth import load_subject_pipeline

    params = db_params(method="lora", identifier=False, training={"num_epochs": 2, "learning_rate": 1e-2})
    train_dreambooth(world, tmp_path, params)
    state = load_file(str(tmp_path / "model" / "adapter_model.safetensors"))
    assert not any(k.startswith("identifier.") for k in state)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in state.items())  # training moved B from zero
    pipe = load_subject_pipeline(tmp_path / "model", base_dir=world / "base")
    assert not pipe.has_identifier
    base = LatentDiffusionPipeline.from_pretrained(str(world / "base"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 60])
    with torch.no_grad():
        tuned, plain = pipe.unet(x, t).sample, base.unet(x, t).sample
    assert (tuned - plain).abs().max() > 1e-4  # the adapter, and only the adapter, changed the model
    # The same model with its LoRA B weights zeroed is the base again: the difference is the adapter's.
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.zero_()
        torch.testing.assert_close(pipe.unet(x, t).sample, plain, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------- own plants


def test_resume_in_the_middle_of_an_epoch_skips_the_consumed_batches(tmp_path):
    """The engine's resume test resumes at an epoch boundary only (nothing to skip there): here the
    checkpoint is at step 3 of a 4-step epoch, so the resumed run must skip 3 batches of epoch 0."""
    from tasks.training.engine import StopTraining, list_checkpoints
    from tests.helpers.training import train_tiny

    cfg = train_config(num_epochs=2, checkpointing_steps=3, checkpoints_total_limit=None)
    _, full = train_tiny(tmp_path, "full", cfg)

    def kill_at_4(step):
        if step == 4:
            raise StopTraining

    with pytest.raises(StopTraining):
        train_tiny(tmp_path, "cut", cfg, step_callback=kill_at_4)
    assert [p.name for p in list_checkpoints(tmp_path / "cut" / "ckpt")] == ["checkpoint-3"]
    summary, resumed = train_tiny(tmp_path, "cut", cfg)
    assert summary["run"]["resumed_from_step"] == 3 and summary["steps"] == 8
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_condition_dropout_nulls_the_seeded_share_of_conditions(tmp_path):
    """cond_drop_prob (classifier-free guidance training) reaches the model: the rows the seeded mask
    picks get the null condition, the others keep theirs."""
    from tests.helpers.training import BATCH

    for p in (0.5, 0.0):
        spec = tiny_spec({})
        seen = []
        spec.prepare_batch = lambda b, d: (b.to(d), torch.ones(b.shape[0], 1))
        spec.null_condition = lambda c, drop: c * (~drop).to(c.dtype)[:, None]
        predict = spec.predict

        def spy(m, x, t, c):
            seen.append(c[:, 0].clone())
            return predict(m, x, t, None)

        spec.predict = spy
        cfg = train_config(num_epochs=1, cond_drop_prob=p, use_ema=False, checkpointing_steps=100)
        train(
            spec,
            cfg,
            model_dir=str(tmp_path / f"m{p}"),
            checkpoint_dir=str(tmp_path / f"c{p}"),
            live_dir=str(tmp_path / f"l{p}"),
            run_id="drop",
            show_progress=False,
        )
        assert len(seen) == 4
        for i, kept in enumerate(seen):
            g = torch.Generator().manual_seed(noise_seed(cfg.seed, 0, i))
            torch.randn((BATCH, 3, 8, 8), generator=g)
            torch.randint(0, cfg.num_train_timesteps, (BATCH,), generator=g)
            want = (torch.rand(BATCH, generator=g) >= p).float() if p > 0 else torch.ones(BATCH)
            assert torch.equal(kept, want), (p, i, kept, want)
        dropped = sum(int((k == 0).sum()) for k in seen)
        assert (dropped == 0) if p == 0 else (4 <= dropped <= 28), dropped
