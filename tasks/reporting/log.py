"""One logger for task code: Prefect's run logger inside a flow or task run, plain logging outside.

Kept free of a module-level prefect import so worker processes (spawned for per-image work) start
fast, and prefect is only asked when it is already loaded: a run context exists only in a process
that imported prefect to start the run, so elsewhere (benchmarks, tests, scripts) the answer is
plain logging without the ~1.2 s of CPU that importing prefect costs.
"""

from __future__ import annotations

import logging
import sys


def get_logger(name: str = "facediff") -> logging.Logger | logging.LoggerAdapter:
    if "prefect" not in sys.modules:
        return _plain_logger(name)
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:
        pass
    return _plain_logger(name)


def _plain_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logger
