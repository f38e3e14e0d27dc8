"""The one process pool for per-item work, safe to use inside Prefect runs.

Prefect keeps threads (event loops, log handlers) alive, and forking such a process can deadlock,
so workers are spawned. A spawned worker re-imports the caller's `__main__` module (for a stage,
its flow module, which imports prefect: about 1.5 s once per stage, in parallel across workers),
so worker functions live in modules that import neither prefect nor torch.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Iterator


def resolve_workers(workers: int) -> int:
    """`workers` <= 0 means every core."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def spawn_executor(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes (<= 0: every core), for callers that submit and wait themselves."""
    return ProcessPoolExecutor(max_workers=resolve_workers(workers), mp_context=mp.get_context("spawn"))


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of `workers` processes, or None when one process is asked for (no overhead)."""
    n = resolve_workers(workers)
    if n == 1:
        yield None
        return
    with spawn_executor(n) as pool:
        yield pool


def imap(pool: ProcessPoolExecutor | None, fn, items, chunksize: int = 8) -> Iterator:
    """Ordered map over `items`, in `pool` when there is one."""
    if pool is None:
        return map(fn, items)
    return pool.map(fn, items, chunksize=chunksize)
