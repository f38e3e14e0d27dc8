"""The engine's step loop leaves the device alone between logging steps.

Reading a device tensor's value on the host (`.item()`, `.tolist()`, `float(t)`, `if t:` ...) waits
for every kernel queued before it: one such read per step keeps a GPU idle while the host prepares
the next step. The CPU has no device to wait for, so the test counts the reads themselves, by the
optimizer step they happen in, during a tiny run, and finds them only at logging, checkpoint and
sample steps.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from tasks.training.engine import train
from tests.helpers.training import tiny_grid_spec, train_config

# Tensor methods that bring a value to the host (a sync when the tensor lives on a GPU).
SYNCS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


def _host_counter(frame) -> bool:
    """torch.optim reads AdamW's step counts with `.item()` (`_get_value`): torch keeps those on the
    host unless the optimizer is fused or capturable, so on a GPU they cost no sync (and the engine's
    fused AdamW on CUDA reads none)."""
    return frame.f_code.co_name == "_get_value" and "torch/optim/" in frame.f_code.co_filename.replace("\\", "/")


def test_no_host_sync_between_logging_steps(tmp_path, monkeypatch):
    now = {"step": 0}  # the optimizer step the loop is working towards; 0 before the loop starts
    syncs: list[tuple[int, str, str]] = []  # (step, method, caller)

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1)
            if now["step"] and not _host_counter(caller):
                syncs.append((now["step"], name, f"{caller.f_code.co_filename}:{caller.f_lineno}"))
            return method(self, *args, **kwargs)

        return wrapper

    spec = tiny_grid_spec({})
    make_loader = spec.make_loader

    def loader(epoch, rank, world):  # the loop begins with the first epoch's loader
        now["step"] = max(now["step"], 1)
        return make_loader(epoch, rank, world)

    spec.make_loader = loader
    # A loss with an extra logged term, as DreamBooth's: its curve must not cost a sync either.
    spec.loss = lambda pred, target, cond: (F.mse_loss(pred, target), {"l1": (pred - target).abs().mean().detach()})
    # 4 steps an epoch, 12 in all: rows at 5, 10 (log_every_steps), 6, 12 (checkpoints) and 8 (the step
    # before the last epoch); sample grids at 8 (every 2 epochs) and 12 (the last step).
    cfg = train_config(num_epochs=3, log_every_steps=5, checkpointing_steps=6, samples_every_epochs=2)
    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    summary = train(
        spec,
        cfg,
        model_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        live_dir=str(tmp_path / "live"),
        run_id="syncs",
        show_progress=False,
        step_callback=lambda step: now.__setitem__("step", step + 1),
    )
    monkeypatch.undo()

    assert summary["steps"] == 12
    quiet = {1, 2, 3, 4, 7, 9, 11}
    between = [s for s in syncs if s[0] in quiet]
    assert not between, "host syncs between logging steps:\n" + "\n".join(
        f"step {s}: .{m} at {c}" for s, m, c in between
    )
    # The count works: each logging step reads its losses, once for the loss and its parts together.
    per_step = {s: sum(1 for t, m, _ in syncs if t == s and m == "tolist") for s in (5, 6, 8, 10, 12)}
    assert per_step == {5: 1, 6: 1, 8: 1, 10: 1, 12: 1}, per_step
    header, *rows = (tmp_path / "live" / "plots" / "metrics" / "train" / "l1.tsv").read_text().splitlines()
    at = header.split("\t").index("step")
    assert [int(r.split("\t")[at]) for r in rows] == [5, 6, 8, 10, 12]  # x: the step
