"""Progress of a long loop: a tqdm bar on a terminal, a few log lines anywhere else.

    from tasks.reporting.progress import progress

    for key in progress(keys, desc="images", unit="img"):
        ...
    with progress(total=steps, desc="train_vae", unit="step", disable=not show) as bar:
        bar.update(1)
        bar.set_postfix(loss=0.061)

On a terminal (stderr is a TTY) `progress` returns `tqdm.auto.tqdm(...)` with the same arguments. In
a log file, CI or a Prefect worker a bar is thousands of carriage-return lines, so there it returns a
`LogProgress`: the same interface (iteration, update, set_postfix, set_description, write, reset,
close, context manager, n / total), writing one line through the project logger (tasks/reporting/log.py)
every FACEDIFF_PROGRESS_SECONDS seconds (default 30) and one when it closes:

    train_vae: 400/1500 step (27%), 6.61 step/s, 60 s elapsed, about 166 s left, loss=0.0612

FACEDIFF_PROGRESS=bar | log | off forces a form (off: nothing; `disable=True` is off for one loop).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

SECONDS_ENV, MODE_ENV = "FACEDIFF_PROGRESS_SECONDS", "FACEDIFF_PROGRESS"
DEFAULT_SECONDS = 30.0


def progress(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool | None = False,
    every: float | None = None,
    **tqdm_kwargs: Any,
):
    """A tqdm bar on a terminal, else a LogProgress (see the module's docstring). `disable=None` (tqdm's
    "only on a terminal") counts as False: off a terminal the log lines are the point. `every`: seconds
    between log lines (default: FACEDIFF_PROGRESS_SECONDS, else 30). Other keyword arguments go to tqdm
    (initial, leave, dynamic_ncols, unit_scale, ...); LogProgress reads initial, leave (False: no final
    line, as tqdm leaves no bar), unit_scale and unit_divisor, and ignores the rest."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "bar", "log", "off"):
        raise ValueError(f"{MODE_ENV}={mode!r}: expected auto, bar, log or off")
    if disable or mode == "off":
        return LogProgress(iterable, total=total, desc=desc, unit=unit, disable=True, **tqdm_kwargs)
    if mode == "bar" or (mode == "auto" and _on_terminal()):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, every=every, **tqdm_kwargs)


def _on_terminal() -> bool:
    """tqdm draws on stderr: a bar only when that is a terminal."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def seconds_between_lines() -> float:
    raw = os.environ.get(SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{SECONDS_ENV}={raw!r}: expected a number of seconds") from None
    if seconds < 0:
        raise ValueError(f"{SECONDS_ENV}={raw!r}: expected a number of seconds >= 0")
    return seconds


class LogProgress:
    """tqdm's interface as rate-limited log lines; `disable=True`: the interface, silent."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: float | None = None,
        desc: str | None = None,
        unit: str = "it",
        *,
        initial: float = 0,
        disable: bool = False,
        every: float | None = None,
        unit_scale: bool = False,
        unit_divisor: int = 1000,
        leave: bool | None = True,
        logger=None,
        clock: Callable[[], float] = time.monotonic,
        **_tqdm_only: Any,
    ):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "", unit
        self.n = self.initial = initial
        self.disable, self.unit_scale, self.unit_divisor = disable, unit_scale, unit_divisor
        self.leave = leave is not False  # tqdm's leave=False (a bar that vanishes, e.g. per file): no final line
        self.every = seconds_between_lines() if every is None else every
        self.postfix = ""
        self._logger, self._clock = logger, clock
        self._start = self._last = clock()
        self._closed = False

    # -- tqdm's interface
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("progress() was given no iterable to iterate over")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable or self._closed:
            return
        now = self._clock()
        if now - self._last >= self.every:
            self._last = now
            self._log(self.line(now))

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_short(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    set_description_str = set_description

    def reset(self, total: float | None = None) -> None:
        self.n = self.initial = 0
        if total is not None:
            self.total = total
        self._start = self._last = self._clock()

    def refresh(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def write(self, s: str, *args: Any, **kwargs: Any) -> None:
        """tqdm.write's use: a message that must not garble the bar; here, a log line."""
        if not self.disable:
            self._log(s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.leave:
            self._log(self.line(self._clock(), final=True))

    # -- the line
    def line(self, now: float, final: bool = False) -> str:
        elapsed = max(now - self._start, 0.0)
        done = self.n - self.initial
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        parts = [f"{count} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if elapsed > 0 and done > 0:
            parts.append(f"{self._amount(done / elapsed, rate=True)} {self.unit}/s")
        if final:  # short of the total at the end: a loop left early (an error, a time limit)
            finished = self.total is None or self.n >= self.total
            parts.append(f"{'done in' if finished else 'stopped after'} {elapsed:.0f} s")
        else:
            parts.append(f"{elapsed:.0f} s elapsed")
            if self.total and done > 0 and self.n < self.total:
                parts.append(f"about {(self.total - self.n) * elapsed / done:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc or 'progress'}: " + ", ".join(parts)

    def _amount(self, value: float, rate: bool = False) -> str:
        if self.unit_scale:
            for prefix in ("", "k", "M", "G", "T"):
                if abs(value) < 999.5 or prefix == "T":
                    return f"{value:.3g}{prefix}" if prefix or rate else f"{value:.0f}"
                value /= self.unit_divisor
        if rate:
            return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return f"{value:g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"

    def _log(self, text: str) -> None:
        if self._logger is None:
            from tasks.reporting.log import get_logger

            self._logger = get_logger()
        self._logger.info(text)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
