"""tasks/reporting/progress.py: a tqdm bar on a terminal; elsewhere a few log lines, rate-limited, and
one at the end, through the project logger."""

from __future__ import annotations

import logging

import pytest

from tasks.reporting import progress as progress_module
from tasks.reporting.progress import LogProgress, progress


class Lines:
    """A logger that keeps what it is told, and a clock the test moves."""

    def __init__(self):
        self.lines, self.now = [], 0.0

    def info(self, text):
        self.lines.append(text)

    def clock(self):
        return self.now


@pytest.fixture
def off_terminal(monkeypatch):
    monkeypatch.delenv(progress_module.MODE_ENV, raising=False)
    monkeypatch.delenv(progress_module.SECONDS_ENV, raising=False)
    monkeypatch.setattr(progress_module, "_on_terminal", lambda: False)


def test_off_a_terminal_lines_are_rate_limited_and_a_final_line_appears(off_terminal):
    out = Lines()
    with progress(total=1000, desc="train", unit="step", logger=out, clock=out.clock) as bar:
        assert isinstance(bar, LogProgress)
        for _ in range(1000):  # 100 s of steps of 0.1 s: a line at 30, 60 and 90 s, not 1000
            out.now += 0.1
            bar.update(1)
            bar.set_postfix(loss=0.0612345, epoch=3)
    assert len(out.lines) == 4
    assert out.lines[0].startswith("train: 300/1000 step (30%), 10 step/s, 30 s elapsed, about 70 s left")
    assert out.lines[0].endswith("loss=0.06123, epoch=3")
    assert out.lines[-1] == "train: 1000/1000 step (100%), 10 step/s, done in 100 s, loss=0.06123, epoch=3"
    bar.close()  # closing twice (the context manager, then the caller) says nothing more
    assert len(out.lines) == 4


def test_the_interval_comes_from_the_environment(off_terminal, monkeypatch):
    monkeypatch.setenv(progress_module.SECONDS_ENV, "5")
    out = Lines()
    bar = progress(total=100, desc="encode", unit="img", logger=out, clock=out.clock)
    for _ in range(100):
        out.now += 0.25
        bar.update(1)
    bar.close()
    assert len(out.lines) == 25 // 5 + 1
    monkeypatch.setenv(progress_module.SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match="FACEDIFF_PROGRESS_SECONDS='soon'"):
        progress(total=1)


def test_iteration_logs_through_the_project_logger_once_at_the_end(off_terminal, caplog):
    caplog.set_level(logging.INFO, logger="facediff")
    assert [x * 2 for x in progress(range(5), desc="images", unit="img")] == [0, 2, 4, 6, 8]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("images:")]
    assert len(lines) == 1 and lines[0].startswith("images: 5/5 img (100%)")


def test_a_loop_left_early_says_where_it_stopped(off_terminal):
    out = Lines()
    with pytest.raises(RuntimeError):
        with progress(total=10, desc="align", unit="img", logger=out, clock=out.clock) as bar:
            out.now = 4.0
            bar.update(3)
            raise RuntimeError("a bad photo")
    assert out.lines == ["align: 3/10 img (30%), 0.75 img/s, stopped after 4 s"]


def test_silent_forms_keep_the_interface(off_terminal, monkeypatch):
    out = Lines()
    with progress(total=3, disable=True, every=0, logger=out, clock=out.clock) as bar:  # the caller's switch
        bar.update(3)
        bar.set_postfix(x=1)
        bar.write("said nowhere")
    assert out.lines == []
    with progress(total=3, leave=False, logger=out, clock=out.clock) as bar:  # tqdm's vanishing (per file) bar
        out.now = 40.0
        bar.update(3)
    assert out.lines == ["progress: 3/3 it (100%), 0.075 it/s, 40 s elapsed"]  # the periodic line, no final one
    monkeypatch.setenv(progress_module.MODE_ENV, "off")
    quiet = Lines()
    with progress(total=2, every=0, logger=quiet, clock=quiet.clock) as bar:
        bar.update(2)
    assert quiet.lines == []


def test_a_terminal_gets_tqdm_and_the_mode_can_be_forced(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.delenv(progress_module.MODE_ENV, raising=False)
    monkeypatch.setattr(progress_module, "_on_terminal", lambda: True)
    bar = progress(total=2, desc="x", disable=False)
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setenv(progress_module.MODE_ENV, "log")
    assert isinstance(progress(total=2), LogProgress)
    monkeypatch.setenv(progress_module.MODE_ENV, "sometimes")
    with pytest.raises(ValueError, match="auto, bar, log or off"):
        progress(total=2)


def test_byte_counts_are_scaled(off_terminal):
    out = Lines()
    bar = progress(
        total=3 << 20,
        initial=1 << 20,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="ffhq.json",
        every=0,
        logger=out,
        clock=out.clock,
    )
    out.now = 2.0
    bar.update(1 << 20)
    assert out.lines == ["ffhq.json: 2M/3M B (67%), 512k B/s, 2 s elapsed, about 2 s left"]
