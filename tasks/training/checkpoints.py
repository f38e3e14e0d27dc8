"""A training run's checkpoints: one folder, one object (`CheckpointStore`).

A checkpoint is `<dir>/checkpoint-<step>/`: accelerate's `save_state` (model, optimizer, LR
schedule, EMA, the engine's counters and guard, every process's RNG) plus a copy of the dvclive
folder as it was at that step, so that loading it also puts the curves and grids back. It is
written under a temporary name and renamed when complete: a kill never leaves half a checkpoint
visible. A checkpoint taken while the divergence guard watched a spike is marked `unhealthy`: the
guard never rolls back to it, and rotation never deletes the newest healthy one.

Only this run resumes from them: `<dir>/fingerprint.json` holds the run key (params, data and code)
and the layout (process count, accumulation) the checkpoints were written with. Another run's
checkpoints, fingerprint and curves are set aside in `<dir>/.previous-run` until this run finishes
(`drop_previous`), and put back if it fails before its first checkpoint (`put_back_previous`): a
run on bad data loses nothing of the last good one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

PREFIX = "checkpoint-"
FINGERPRINT = "fingerprint.json"
PREVIOUS_RUN = ".previous-run"
LIVE_COPY = "dvclive"  # inside a checkpoint: the dvclive folder at that step
UNHEALTHY = "unhealthy"  # inside a checkpoint: taken while the guard watched a spike


class ResumeError(RuntimeError):
    """A checkpoint of this run that cannot be resumed as configured (says what to do instead)."""


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints in `directory`, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=step_of)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(PREFIX) :])


def _remove(path: Path) -> None:
    """Delete a file or a folder; nothing when it is not there."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class CheckpointStore:
    def __init__(self, directory: str | Path, live_dir: str | Path, accelerator, keep: int | None):
        self.dir, self.live_dir = Path(directory), Path(live_dir)
        self.accelerator, self.keep = accelerator, keep
        self.is_main = accelerator.is_main_process

    # ------------------------------------------------------------------ which run the folder holds
    def adopt(self, run_key: str, layout: dict, log) -> None:
        """Keep checkpoints only if this code wrote them for this run; set another run's aside.

        A `.previous-run` that is already there holds the last finished run; what stands beside it
        then belongs to an unfinished one and is deleted. Every process checks (so all raise
        together); only the main process moves and writes."""
        marker = self._marker()
        if marker.get("run_id") == run_key:
            self._check_layout(marker, layout)
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if marker.get("run_id") != run_key:
                self._set_aside(run_key, layout, log)
            for tmp in self.dir.glob("*.tmp"):  # a save cut short by a kill
                shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def _marker(self) -> dict:
        try:
            return json.loads((self.dir / FINGERPRINT).read_text())
        except (OSError, ValueError):
            return {}

    def _check_layout(self, marker: dict, layout: dict) -> None:
        """Refuse checkpoints of this run written with another process count or accumulation."""
        if not list_checkpoints(self.dir):
            return
        diff = {k: (marker.get(k), v) for k, v in layout.items() if marker.get(k) != v}
        if diff:
            said = ", ".join(f"{k} {old} (now {new})" for k, (old, new) in sorted(diff.items()))
            raise ResumeError(
                f"{self.dir} holds checkpoints of this run written with {said}: resuming would not continue "
                f"the same batch order. Run with the settings it was written with, or delete {self.dir} "
                "to start afresh."
            )

    def _set_aside(self, run_key: str, layout: dict, log) -> None:
        stale = list_checkpoints(self.dir)
        if stale:
            log.warning(
                f"{self.dir}: {len(stale)} checkpoint(s) of another run (code, params or data changed); "
                f"starting afresh, the old ones kept in {PREVIOUS_RUN} until this run ends"
            )
        previous = self.dir / PREVIOUS_RUN
        keep = not previous.is_dir()
        previous.mkdir(exist_ok=True)
        for p in [*stale, self.dir / FINGERPRINT, self.live_dir]:
            if keep and p.exists():
                shutil.move(p, previous / (LIVE_COPY if p == self.live_dir else p.name))
            else:
                _remove(p)
        (self.dir / FINGERPRINT).write_text(json.dumps({"run_id": run_key, **layout}) + "\n")

    def put_back_previous(self) -> None:
        """Undo the setting aside, for a run that failed before any checkpoint of its own."""
        previous = self.dir / PREVIOUS_RUN
        if not self.is_main or not previous.is_dir() or list_checkpoints(self.dir):
            return
        for p in (self.dir / FINGERPRINT, self.live_dir):
            _remove(p)
        for p in previous.iterdir():
            shutil.move(p, self.live_dir if p.name == LIVE_COPY else self.dir / p.name)
        previous.rmdir()

    def drop_previous(self) -> None:
        if self.is_main:
            shutil.rmtree(self.dir / PREVIOUS_RUN, ignore_errors=True)

    # ------------------------------------------------------------------ this run's checkpoints
    def latest(self, healthy: bool = False) -> Path | None:
        found = [c for c in list_checkpoints(self.dir) if not (healthy and (c / UNHEALTHY).exists())]
        return found[-1] if found else None

    def load(self, checkpoint: Path) -> None:
        """The run as it was at `checkpoint`: accelerate's state and the dvclive folder."""
        self.accelerator.load_state(str(checkpoint))
        if self.is_main:
            if self.live_dir.exists():
                shutil.rmtree(self.live_dir)
            if (checkpoint / LIVE_COPY).is_dir():
                shutil.copytree(checkpoint / LIVE_COPY, self.live_dir)
        self.accelerator.wait_for_everyone()

    def save(self, step: int, healthy: bool) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        final = self.dir / f"{PREFIX}{step}"
        tmp = self.dir / (final.name + ".tmp")
        acc.save_state(str(tmp))  # the main process writes the shared state; each rank its RNG
        acc.wait_for_everyone()
        if self.is_main:
            if self.live_dir.is_dir():  # the curves and grids so far travel with the checkpoint
                shutil.copytree(self.live_dir, tmp / LIVE_COPY)
            if not healthy:
                (tmp / UNHEALTHY).touch()
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._rotate()
        acc.wait_for_everyone()

    def _rotate(self) -> None:
        """Keep the newest `keep` checkpoints, and the newest healthy one whatever its age."""
        if self.keep is None:
            return
        newest_healthy = self.latest(healthy=True)
        for old in list_checkpoints(self.dir)[: -self.keep]:
            if old != newest_healthy:
                shutil.rmtree(old)

    def discard_after(self, step: int) -> None:
        """Drop the checkpoints of a branch rolled back from (those after `step`)."""
        if self.is_main:
            for c in list_checkpoints(self.dir):
                if step_of(c) > step:
                    shutil.rmtree(c)
        self.accelerator.wait_for_everyone()

    def discard_run(self) -> None:
        """Drop every checkpoint of this run (it diverged for good: resuming would only repeat it)."""
        if self.is_main:
            for c in list_checkpoints(self.dir):
                shutil.rmtree(c)
        self.accelerator.wait_for_everyone()
