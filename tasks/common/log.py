"""One logger for task code: Prefect's run logger inside a flow or task run, plain logging outside.

Kept free of a module-level prefect import so worker processes (spawned for per-image work) start
fast.
"""
from __future__ import annotations

import logging


def get_logger(name: str = "facediff") -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:
        pass
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return logger
