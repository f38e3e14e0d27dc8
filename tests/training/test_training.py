"""The shared training engine on a tiny unconditional UNet and an in-memory dataset (no shards)."""

from __future__ import annotations

import pytest
import torch

from tasks.training import engine
from tasks.training.checkpoints import FINGERPRINT, PREVIOUS_RUN, ResumeError
from tasks.training.config import TrainConfig
from tasks.training.engine import StopTraining, list_checkpoints, noise_seed, train
from tasks.training.memory import memory_anatomy
from tests.helpers.training import BATCH, TinyLoader, tiny_grid_spec, tiny_images, tiny_spec, train_config, train_tiny


def _losses(live_dir):
    header, *rows = (live_dir / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    step, loss = header.split("\t").index("step"), header.split("\t").index("loss")
    return [(int(r.split("\t")[step]), float(r.split("\t")[loss])) for r in rows]


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    cfg = train_config(log_every_steps=3)  # rows at 2, 3, 4, 6, 8: a row's steps never span the resume
    summary, full = train_tiny(tmp_path, "a", cfg)
    assert summary["steps"] == 8 and summary["run"]["resumed_from_step"] is None
    _, again = train_tiny(tmp_path, "b", cfg)
    assert all(torch.equal(full[k], again[k]) for k in full)

    # Killed after step 5 (last checkpoint at step 4), then run again: resumes, ends identical.
    def kill_at_5(step):
        if step == 5:
            raise StopTraining

    with pytest.raises(StopTraining):
        train_tiny(tmp_path, "c", cfg, step_callback=kill_at_5)
    assert [p.name for p in list_checkpoints(tmp_path / "c" / "ckpt")] == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "c" / "model").exists()
    summary, resumed = train_tiny(tmp_path, "c", cfg)
    assert summary["run"]["resumed_from_step"] == 4
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # Total limit honoured; the curve has each step once, equal to the uninterrupted run's.
    assert [p.name for p in list_checkpoints(tmp_path / "c" / "ckpt")] == ["checkpoint-6", "checkpoint-8"]
    assert _losses(tmp_path / "c" / "live") == _losses(tmp_path / "a" / "live")


def test_changed_params_discard_old_checkpoints(tmp_path):
    saved: dict = {}
    kw = dict(
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "ck"),
        live_dir=str(tmp_path / "l"),
        show_progress=False,
    )
    train(tiny_spec(saved), train_config(num_epochs=1), run_id="one", **kw)
    summary = train(tiny_spec(saved), train_config(num_epochs=1), run_id="two", **kw)
    assert summary["run"]["resumed_from_step"] is None


def test_loss_falls_with_accumulation(tmp_path):
    summary, _ = train_tiny(
        tmp_path, "f", train_config(num_epochs=10, gradient_accumulation_steps=2, checkpointing_steps=100)
    )
    losses = [l for _, l in _losses(tmp_path / "f" / "live")]
    assert summary["steps"] == len(losses) == 20  # 4 micro-batches per epoch, 2 per step
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    lrs = (tmp_path / "f" / "live" / "plots" / "metrics" / "train" / "lr.tsv").read_text().splitlines()[1:]
    lrs = [float(r.split("\t")[-1]) for r in lrs]
    assert lrs[0] < lrs[1] == pytest.approx(3e-3) and lrs[-1] < 1e-4  # warmup, then cosine to ~0


def test_v_prediction_target(tmp_path):
    """With v_prediction the model is regressed on v = sqrt(a) eps - sqrt(1 - a) x0."""
    seen = {}
    spec = tiny_spec({})
    predict = spec.predict

    def spy(m, x, t, c):
        seen["x"], seen["t"] = x.detach().clone(), t.clone()
        return predict(m, x, t, c)

    spec.predict = spy
    cfg = train_config(
        num_epochs=1,
        max_train_steps=1,
        prediction_type="v_prediction",
        beta_schedule="squaredcos_cap_v2",
        use_ema=False,
        max_grad_norm=None,
    )
    summary = train(
        spec,
        cfg,
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "c"),
        live_dir=str(tmp_path / "l"),
        run_id="v",
        show_progress=False,
    )
    assert summary["steps"] == 1
    a = cfg.noise_scheduler().alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(noise_seed(cfg.seed, 0, 0))  # rank 0, first micro-batch
    x0 = tiny_images()[TinyLoader(tiny_images(), 0, 0, 1).order[:BATCH]]
    noise = torch.randn(x0.shape, generator=g)
    assert torch.allclose(seen["x"], a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-5)


def test_min_snr_weighting_matches_its_definition():
    from diffusers import DDPMScheduler

    from tasks.training.diffusion import denoising_loss

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = sched.alphas_cumprod[t]
    snr = a / (1 - a)
    per_sample = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(denoising_loss(pred, target, t, sched, train_config()), per_sample.mean())
    eps = denoising_loss(pred, target, t, sched, train_config(snr_gamma=5.0))
    assert torch.allclose(eps, (per_sample * torch.minimum(snr, torch.tensor(5.0)) / snr).mean())
    v = denoising_loss(pred, target, t, sched, train_config(snr_gamma=5.0, prediction_type="v_prediction"))
    assert torch.allclose(v, (per_sample * torch.minimum(snr, torch.tensor(5.0)) / (snr + 1)).mean())
    # clean timesteps (SNR >> gamma) are down-weighted, noisy ones (SNR < gamma) keep weight 1
    assert snr[0] > 5 > snr[3]


def test_memory_anatomy_matches_model_and_optimizer(tmp_path):
    summary, _ = train_tiny(tmp_path, "m", train_config(num_epochs=1, checkpointing_steps=100))
    anatomy = summary["run"]["memory_anatomy"]
    model = tiny_spec({}).build_model()
    n = sum(p.numel() for p in model.parameters())
    assert anatomy["trainable_parameters"] == anatomy["parameters"] == n
    assert anatomy["weights_mb"] == pytest.approx(n * 4 / 2**20)
    assert (
        anatomy["adam_state_mb_measured"] == pytest.approx(anatomy["adam_state_mb"]) == pytest.approx(2 * n * 4 / 2**20)
    )
    # The blog-post figure: 117M fp32 parameters are about 447 MB of weights.
    big = torch.nn.Linear(1, 1)
    big.weight = torch.nn.Parameter(torch.empty(117_200_000, 1, device="meta"))
    assert memory_anatomy(big)["weights_mb"] == pytest.approx(447, abs=0.5)


def test_bad_training_params_are_named():
    from tasks.config.typed import ConfigError

    with pytest.raises(ValueError, match="prediction_type"):
        train_config(prediction_type="sample")
    with pytest.raises(ValueError, match="snr_gamma"):
        train_config(snr_gamma=0.0)
    with pytest.raises(ConfigError, match="learning_rte"):
        TrainConfig.from_params({**train_config().to_dict(), "learning_rte": 1.0})


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_of_a_finished_run_regenerates_identical_outputs(tmp_path):
    """`dvc repro -f` on a finished stage: DVC deletes the model and dvclive outs, keeps the
    (persist) checkpoints; the engine resumes at the end and writes the same bytes again,
    including a grid at the final epoch although 2 epochs is no multiple of samples_every_epochs."""
    cfg = train_config(samples_every_epochs=4)
    kw = dict(
        model_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        live_dir=str(tmp_path / "live"),
        run_id="r",
        show_progress=False,
    )
    first = train(tiny_grid_spec({}), cfg, **kw)
    assert (tmp_path / "live" / "plots" / "images" / "samples" / "epoch-002.png").is_file()
    model, live = _files(tmp_path / "model"), _files(tmp_path / "live")
    import shutil

    shutil.rmtree(tmp_path / "model")
    shutil.rmtree(tmp_path / "live")
    again = train(tiny_grid_spec({}), cfg, **kw)
    assert again["run"]["resumed_from_step"] == again["steps"] == first["steps"] == 8
    assert {k: v for k, v in again.items() if k != "run"} == {k: v for k, v in first.items() if k != "run"}
    assert _files(tmp_path / "model") == model
    assert _files(tmp_path / "live") == live


def test_code_change_discards_checkpoints(tmp_path, monkeypatch):
    """Same params and data, other code: nothing is resumed, the full step count is trained."""
    cfg = train_config(num_epochs=1)
    kw = dict(
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "ck"),
        live_dir=str(tmp_path / "l"),
        run_id="same",
        show_progress=False,
    )
    train(tiny_spec({}), cfg, **kw)
    resumed = train(tiny_spec({}), cfg, **kw)
    assert resumed["run"]["resumed_from_step"] == 4
    monkeypatch.setattr(engine, "code_identity", lambda: "other code")
    fresh = train(tiny_spec({}), cfg, **kw)
    assert fresh["run"]["resumed_from_step"] is None and fresh["steps"] == 4
    # The old run's state was kept aside while this one trained, and dropped once it finished.
    assert not (tmp_path / "ck" / PREVIOUS_RUN).exists()


def test_resume_refuses_another_accumulation_or_process_count(tmp_path):
    kw = dict(
        model_dir=str(tmp_path / "m"),
        checkpoint_dir=str(tmp_path / "ck"),
        live_dir=str(tmp_path / "l"),
        run_id="same",
        show_progress=False,
    )

    def stop_at_2(step):
        if step == 2:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(tiny_spec({}), train_config(), step_callback=stop_at_2, **kw)
    with pytest.raises(ResumeError, match="gradient_accumulation_steps 1 \\(now 2\\)"):
        train(tiny_spec({}), train_config(gradient_accumulation_steps=2), **kw)
    # As if the checkpoints had been written by two processes (accelerate launch).
    marker = tmp_path / "ck" / FINGERPRINT
    import json

    marker.write_text(json.dumps({**json.loads(marker.read_text()), "processes": 2}))
    with pytest.raises(ResumeError, match="processes 2 \\(now 1\\)"):
        train(tiny_spec({}), train_config(), **kw)


def test_skipped_optimizer_steps_leave_lr_and_ema_alone(tmp_path, monkeypatch):
    """The fp16 grad scaler skips steps with inf/nan gradients; such steps must not advance the
    LR schedule or the EMA. Here every step is reported skipped: the LR stays at its warmup start
    (0) and the EMA weights, hence the saved model, stay the initial weights."""
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    summary, saved = train_tiny(tmp_path, "s", train_config(num_epochs=1))
    assert summary["steps"] == 4
    lrs = (tmp_path / "s" / "live" / "plots" / "metrics" / "train" / "lr.tsv").read_text().splitlines()[1:]
    assert [float(r.split("\t")[-1]) for r in lrs] == [0.0] * 4
    torch.manual_seed(3)
    initial = tiny_spec({}).build_model().state_dict()
    assert all(torch.equal(initial[k], saved[k]) for k in initial)


def test_logged_rows_are_means_of_the_steps_between(tmp_path):
    """Logging every 5 steps changes nothing but the curve: the same weights; one row per logging step
    (and per checkpoint, and before the last epoch) at x = the step, the mean of the steps since the
    row before; final_loss still the mean over the last epoch's steps."""
    one, w1 = train_tiny(tmp_path, "one", train_config(checkpointing_steps=100))
    three, w3 = train_tiny(tmp_path, "three", train_config(checkpointing_steps=100, log_every_steps=3))
    assert all(torch.equal(w1[k], w3[k]) for k in w1)
    per_step = dict(_losses(tmp_path / "one" / "live"))
    assert sorted(per_step) == list(range(1, 9))
    rows = _losses(tmp_path / "three" / "live")
    assert [s for s, _ in rows] == [3, 4, 6, 8]  # 3, 6: log_every_steps; 4: before the last epoch (8 - 4); 8: the end
    for (prev, _), (step, value) in zip([(0, None)] + rows, rows):
        assert value == pytest.approx(sum(per_step[s] for s in range(prev + 1, step + 1)) / (step - prev), rel=1e-6)
    assert one["final_loss"] == pytest.approx(sum(per_step[s] for s in range(5, 9)) / 4, rel=1e-12)
    assert three["final_loss"] == pytest.approx(one["final_loss"], rel=1e-6)


def test_bad_input_fails_before_a_checkpoint_is_deleted(tmp_path):
    """Another run (new data) with no batch to train on fails with a clear error and
    leaves the last good run's checkpoints, curves and model as they were."""
    kw = dict(
        model_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        live_dir=str(tmp_path / "live"),
        show_progress=False,
    )
    train(tiny_spec({}), train_config(num_epochs=1), run_id="good data", **kw)
    before = _files(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path / "ckpt")] == ["checkpoint-2", "checkpoint-4"]
    empty = tiny_spec({})
    empty.batches_per_epoch, empty.make_loader = 0, lambda epoch, rank, world: iter(())
    with pytest.raises(ValueError, match="0 batches per epoch .* the training data is empty"):
        train(empty, train_config(num_epochs=1), run_id="bad data", **kw)
    assert _files(tmp_path) == before
