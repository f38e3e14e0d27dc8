"""The shared training engine on a tiny unconditional UNet and an in-memory dataset (no shards)."""
from __future__ import annotations


import pytest
import torch
from diffusers import UNet2DModel

from tasks.training import StopTraining, TrainConfig, TrainSpec, list_checkpoints, memory_anatomy, noise_seed, train

N_IMAGES, BATCH = 32, 8


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # Smooth blobs, so a tiny UNet has structure to learn within a few steps.
    base = torch.rand(N_IMAGES, 3, 2, 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear", align_corners=False)


class _Loader:
    """Deterministic for (seed, epoch); shards the images by rank like the real loaders."""

    def __init__(self, images, epoch, rank, world):
        self.images = images[rank::world]
        self.order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(1000 + epoch))

    def __iter__(self):
        for i in range(0, len(self.order) - BATCH + 1, BATCH):
            yield self.images[self.order[i:i + BATCH]]


def _spec(saved: dict) -> TrainSpec:
    images = _images()

    def build():
        return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                           layers_per_block=1, norm_num_groups=4)

    def save(net, scheduler, out_dir):
        net.save_pretrained(out_dir)
        saved["state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    return TrainSpec(build_model=build, make_loader=lambda e, r, w: _Loader(images, e, r, w),
                     batches_per_epoch=N_IMAGES // BATCH, prepare_batch=lambda b, d: (b.to(d), None),
                     predict=lambda m, x, t, c: m(x, t).sample, save=save)


def _cfg(**kw) -> TrainConfig:
    base = dict(seed=3, num_epochs=2, learning_rate=3e-3, lr_warmup_steps=2, checkpointing_steps=2,
                checkpoints_total_limit=2, ema_decay=0.9, samples_every_epochs=0)
    return TrainConfig(**{**base, **kw})


def _run(tmp_path, name, cfg, **kw):
    saved: dict = {}
    summary = train(_spec(saved), cfg, model_dir=str(tmp_path / name / "model"),
                    checkpoint_dir=str(tmp_path / name / "ckpt"), live_dir=str(tmp_path / name / "live"),
                    run_id="test", show_progress=False, **kw)
    return summary, saved.get("state")


def _losses(live_dir):
    header, *rows = (live_dir / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    step, loss = header.split("\t").index("step"), header.split("\t").index("loss")
    return [(int(r.split("\t")[step]), float(r.split("\t")[loss])) for r in rows]


def test_same_seed_same_weights_and_resume_is_exact(tmp_path):
    cfg = _cfg()
    summary, full = _run(tmp_path, "a", cfg)
    assert summary["steps"] == 8 and summary["resumed_from_step"] is None
    _, again = _run(tmp_path, "b", cfg)
    assert all(torch.equal(full[k], again[k]) for k in full)

    # Killed after step 5 (last checkpoint at step 4), then run again: resumes, ends identical.
    def kill_at_5(step):
        if step == 5:
            raise StopTraining

    with pytest.raises(StopTraining):
        _run(tmp_path, "c", cfg, step_callback=kill_at_5)
    assert [p.name for p in list_checkpoints(tmp_path / "c" / "ckpt")] == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "c" / "model").exists()
    summary, resumed = _run(tmp_path, "c", cfg)
    assert summary["resumed_from_step"] == 4
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    # Total limit honoured; the curve has each step once, equal to the uninterrupted run's.
    assert [p.name for p in list_checkpoints(tmp_path / "c" / "ckpt")] == ["checkpoint-6", "checkpoint-8"]
    assert _losses(tmp_path / "c" / "live") == _losses(tmp_path / "a" / "live")


def test_changed_params_discard_old_checkpoints(tmp_path):
    saved: dict = {}
    kw = dict(model_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "ck"), live_dir=str(tmp_path / "l"),
              show_progress=False)
    train(_spec(saved), _cfg(num_epochs=1), run_id="one", **kw)
    summary = train(_spec(saved), _cfg(num_epochs=1), run_id="two", **kw)
    assert summary["resumed_from_step"] is None


def test_loss_falls_with_accumulation(tmp_path):
    summary, _ = _run(tmp_path, "f", _cfg(num_epochs=10, gradient_accumulation_steps=2, checkpointing_steps=100))
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
    spec = _spec({})
    predict = spec.predict

    def spy(m, x, t, c):
        seen["x"], seen["t"] = x.detach().clone(), t.clone()
        return predict(m, x, t, c)

    spec.predict = spy
    cfg = _cfg(num_epochs=1, max_train_steps=1, prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2",
               use_ema=False, max_grad_norm=None)
    summary = train(spec, cfg, model_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "c"),
                    live_dir=str(tmp_path / "l"), run_id="v", show_progress=False)
    assert summary["steps"] == 1
    a = cfg.noise_scheduler().alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(noise_seed(cfg.seed, 0, 0))  # rank 0, first micro-batch
    x0 = _images()[_Loader(_images(), 0, 0, 1).order[:BATCH]]
    noise = torch.randn(x0.shape, generator=g)
    assert torch.allclose(seen["x"], a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-5)


def test_memory_anatomy_matches_model_and_optimizer(tmp_path):
    summary, _ = _run(tmp_path, "m", _cfg(num_epochs=1, checkpointing_steps=100))
    anatomy = summary["memory_anatomy"]
    model = _spec({}).build_model()
    n = sum(p.numel() for p in model.parameters())
    assert anatomy["trainable_parameters"] == anatomy["parameters"] == n
    assert anatomy["weights_mb"] == pytest.approx(n * 4 / 2**20)
    assert anatomy["adam_state_mb_measured"] == pytest.approx(anatomy["adam_state_mb"]) == pytest.approx(2 * n * 4 / 2**20)
    # The blog-post figure: 117M fp32 parameters are about 447 MB of weights.
    big = torch.nn.Linear(1, 1)
    big.weight = torch.nn.Parameter(torch.empty(117_200_000, 1, device="meta"))
    assert memory_anatomy(big)["weights_mb"] == pytest.approx(447, abs=0.5)


def test_bad_training_params_are_named():
    with pytest.raises(ValueError, match="prediction_type"):
        TrainConfig(prediction_type="sample")
    with pytest.raises(KeyError, match="learning_rte"):
        TrainConfig.from_params({"learning_rte": 1.0})
