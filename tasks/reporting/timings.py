"""Where a stage writes how its run went, apart from what it made.

A metrics file (metrics/<stage>.json, declared under `metrics:` in dvc.yaml) holds only figures a
deterministic re-run reproduces, so `dvc metrics diff` after a re-run is empty. Wall-clock time,
throughput, the step a run resumed from and measured memory go to metrics/timings/<stage>.json,
declared as a plain uncached out: kept with the results, never compared as a metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.shards.dataset import write_json_atomic


def timings_path(metrics_path: str | Path) -> Path:
    """metrics/train_ldm.json -> metrics/timings/train_ldm.json."""
    p = Path(metrics_path)
    return p.parent / "timings" / p.name


def write_metrics(metrics_path: str | Path, metrics: dict[str, Any], timings: dict[str, Any]) -> None:
    """The quality metrics to `metrics_path`, the run's timings beside them (timings_path)."""
    for path, data in ((Path(metrics_path), metrics), (timings_path(metrics_path), timings)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, data)
