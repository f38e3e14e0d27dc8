"""The divergence guard: when a run's loss has left the rails, and what then.

The engine shows the guard each logged loss (the mean over the steps since the row before; those
means are the only losses that reach the host, so the guard costs no extra sync). A row is

  healthy   finite and at most `spike_factor` times the median of the recent healthy rows;
  a spike   above that; `patience` spikes in a row, or one non-finite row, mean the run diverged.

A diverged run is rolled back by the engine to its newest checkpoint taken while healthy (weights,
optimizer, EMA, LR schedule, counters, curves) and continues from there at `lr_factor` times the
learning rate, at most `max_recoveries` times; after that the stage fails with `DivergenceError`.
Why roll back rather than skip: a spike that Adam has already folded into its moment estimates
keeps pushing the weights after the loss itself looks normal again (the face VAE's collapse at step
~300 never came back on its own).

The guard's state (recent rows, recoveries, learning-rate scale) is saved with every checkpoint,
so a run resumed after a kill judges its rows as the uninterrupted run would.
"""

from __future__ import annotations

import math
import statistics

from tasks.training.config import GuardConfig

RECENT_ROWS = 20  # the "recent level": the median of this many healthy rows
MIN_ROWS = 3  # fewer healthy rows: no level yet, only non-finite losses count


class DivergenceError(RuntimeError):
    """Training diverged more often than the guard may recover from."""


class DivergenceGuard:
    def __init__(self, config: GuardConfig):
        self.config = config
        self.recent: list[float] = []  # the last healthy rows' losses
        self.spikes = 0  # spiking rows in a row, up to now
        self.recoveries = 0  # roll-backs so far in this run
        self.lr_scale = 1.0  # the product of the recoveries' lr_factor

    @property
    def level(self) -> float | None:
        return statistics.median(self.recent) if len(self.recent) >= MIN_ROWS else None

    def judge(self, loss: float, *, last_row: bool = False) -> str:
        """'healthy', 'spike' (watching) or 'diverged' (roll back now). At the run's last row a
        spike counts as diverged: a model caught mid-spike must not be saved."""
        if not math.isfinite(loss):
            return "diverged"
        level = self.level
        if level is not None and loss > self.config.spike_factor * level:
            self.spikes += 1
            return "diverged" if self.spikes >= self.config.patience or last_row else "spike"
        self.spikes = 0
        self.recent = (self.recent + [loss])[-RECENT_ROWS:]
        return "healthy"

    @property
    def healthy(self) -> bool:
        """No spike under watch: a checkpoint taken now is one to roll back to."""
        return self.spikes == 0

    def can_recover(self) -> bool:
        return self.recoveries < self.config.max_recoveries

    def after_rollback(self, recoveries: int, lr_scale: float) -> None:
        """The state loaded from the checkpoint, with this roll-back counted (the checkpoint's own
        counts are older)."""
        self.recoveries, self.lr_scale, self.spikes = recoveries + 1, lr_scale * self.config.lr_factor, 0

    def state_dict(self) -> dict:
        return {
            "recent": list(self.recent),
            "spikes": self.spikes,
            "recoveries": self.recoveries,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict) -> None:
        self.recent, self.spikes = [float(x) for x in state["recent"]], int(state["spikes"])
        self.recoveries, self.lr_scale = int(state["recoveries"]), float(state["lr_scale"])
