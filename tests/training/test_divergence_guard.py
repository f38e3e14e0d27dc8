"""The divergence guard: a spike is rolled back from at a lower learning rate, a divergence that
persists fails the stage with one line and leaves the last good run's files as they were."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.training.config import GuardConfig, LoopConfig
from tasks.training.engine import DivergenceError, TrainSpec, train
from tasks.training.guard import DivergenceGuard

GUARD = GuardConfig(spike_factor=3.0, patience=2, max_recoveries=2, lr_factor=0.5)


def _cfg(**kw) -> LoopConfig:
    base = dict(
        seed=0,
        num_epochs=6,
        max_train_steps=None,
        gradient_accumulation_steps=1,
        mixed_precision="no",
        learning_rate=5e-2,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_weight_decay=0.0,
        adam_epsilon=1e-8,
        lr_warmup_steps=0,
        max_grad_norm=None,
        use_ema=True,
        ema_decay=0.9,
        checkpointing_steps=5,
        checkpoints_total_limit=1,
        samples_every_epochs=0,
        log_every_steps=1,
        guard=GUARD,
    )
    return LoopConfig(**{**base, **kw})


def _spec(faulty: Callable[[int], bool] = lambda call: False) -> TrainSpec:
    """A linear regression, 10 batches an epoch. `faulty(call)`: the objective's n-th call returns
    its loss plus 1e3 (a transient fault, as a float-order accident would be)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g)
    calls = [0]

    def objective(model, batch, generator):
        calls[0] += 1
        loss = (model(batch[0]) - batch[1]).square().mean()
        return (loss + 1e3 if faulty(calls[0]) else loss), {}

    return TrainSpec(
        build_model=lambda: nn.Linear(4, 2),
        batches_per_epoch=10,
        objective=objective,
        make_loader=lambda epoch, rank, world: [(x[i : i + 8], y[i : i + 8]) for i in range(0, 80, 8)],
        save=lambda net, out: torch.save(net.state_dict(), Path(out) / "weights.pt"),
    )


def _run(tmp_path: Path, spec: TrainSpec, cfg: LoopConfig, run_id: str = "run") -> dict:
    return train(
        spec,
        cfg,
        model_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        live_dir=str(tmp_path / "live"),
        run_id=run_id,
        show_progress=False,
    )


def _rows(tmp_path: Path, name: str) -> list[tuple[int, float]]:
    header, *rows = (tmp_path / "live" / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines()
    at_step, at_value = header.split("\t").index("step"), header.split("\t").index(name)
    return [(int(r.split("\t")[at_step]), float(r.split("\t")[at_value])) for r in rows]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_the_guard_judges_rows_against_the_recent_median():
    guard = DivergenceGuard(GUARD)
    assert [guard.judge(v) for v in (1.0, 0.9, 100.0)] == ["healthy"] * 3  # no level before 3 rows
    assert guard.judge(3.5) == "spike" and not guard.healthy  # above 3 x median(1, 0.9, 100) = 3 x 1
    assert guard.judge(0.8) == "healthy" and guard.healthy  # a spike that falls back is forgiven
    assert [guard.judge(5.0), guard.judge(5.0)] == ["spike", "diverged"]  # patience 2
    assert DivergenceGuard(GUARD).judge(math.nan) == "diverged"  # non-finite: at once, even with no level
    last = DivergenceGuard(GUARD)
    for v in (1.0, 1.0, 1.0):
        last.judge(v)
    assert last.judge(9.0, last_row=True) == "diverged"  # never save a model mid-spike


def test_a_spike_is_rolled_back_from_at_a_lower_learning_rate(tmp_path, caplog):
    clean = _run(tmp_path / "clean", _spec(), _cfg())
    spiked = _run(tmp_path, _spec(faulty=lambda call: call in (23, 24)), _cfg())
    assert clean["recoveries"] == 0 and spiked["recoveries"] == 1
    assert spiked["steps"] == clean["steps"] == 60
    assert "divergence guard: loss" in caplog.text and "rolled back to step 20" in caplog.text
    # The curves are those of the run that went on: no row of the abandoned branch, steps in order.
    steps = [s for s, _ in _rows(tmp_path, "loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert max(v for _, v in _rows(tmp_path, "loss")) < 100
    # From the roll-back on, the learning rate is half the clean run's at the same step.
    lr, clean_lr = dict(_rows(tmp_path, "lr")), dict(_rows(tmp_path / "clean", "lr"))
    assert lr[10] == pytest.approx(clean_lr[10]) and lr[40] == pytest.approx(clean_lr[40] / 2)
    first = _rows(tmp_path, "loss")[0][1]
    assert spiked["final_loss"] < first / 4 and clean["final_loss"] < first / 4  # and both learned


def test_a_divergence_that_persists_fails_and_keeps_the_last_good_run(tmp_path):
    _run(tmp_path, _spec(), _cfg(), run_id="good")
    before = _files(tmp_path)
    with pytest.raises(DivergenceError, match=r"training diverged at step \d+ \(loss 100\d\) after 2 recoveries"):
        _run(tmp_path, _spec(faulty=lambda call: call > 23), _cfg(), run_id="other data")
    assert _files(tmp_path) == before


def test_a_divergence_before_any_healthy_checkpoint_says_what_to_change(tmp_path):
    with pytest.raises(DivergenceError, match="no healthy checkpoint to return to"):
        _run(tmp_path, _spec(faulty=lambda call: call > 2), _cfg())
    assert not (tmp_path / "model").exists()
