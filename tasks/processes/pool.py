"""The one process pool for per-item work, safe to use inside Prefect runs.

Prefect keeps threads (event loops, log handlers) alive, and forking such a process can deadlock,
so workers are spawned. A spawned worker imports only what unpickling its work needs: worker
functions live in modules that import neither prefect nor torch, and, unlike multiprocessing's
default, the workers here do not re-run the caller's `__main__` module (see `_preparation_data`),
so they cannot run functions defined in a `__main__` script.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.spawn
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

# multiprocessing re-runs the parent's `__main__` module in every spawned child (as `__mp_main__`),
# in case the work refers to functions defined there. The pool's work never does, so that is pure
# start-up cost: a stage's flow module imports prefect (~1.2 s of CPU per worker), a benchmark
# script its whole stage. The pool's processes are named `_PoolWorker-N`, and for those names the
# data sent to the child leaves out the main module; every other spawned process is unchanged.
_POOL_WORKER = "_PoolWorker"


class _PoolWorker(mp.context.SpawnProcess):
    """A spawned process; its class name marks it as the pool's (see `_preparation_data`)."""


class _PoolContext(mp.context.SpawnContext):
    Process = _PoolWorker


def _preparation_data(name: str, _stdlib=multiprocessing.spawn.get_preparation_data) -> dict:
    data = _stdlib(name)
    if name.startswith(_POOL_WORKER + "-"):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


multiprocessing.spawn.get_preparation_data = _preparation_data


def resolve_workers(workers: int) -> int:
    """`workers` <= 0 means every core."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def spawn_executor(workers: int, initializer=None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """`workers` spawned processes (<= 0: every core), for callers that submit and wait themselves;
    `initializer(*initargs)` runs once in each (e.g. to load models)."""
    return ProcessPoolExecutor(
        max_workers=resolve_workers(workers), mp_context=_PoolContext(), initializer=initializer, initargs=initargs
    )


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
