"""Progress on long work: plain log lines without a terminal, a tqdm bar on one."""

from __future__ import annotations

import logging

import pytest

import encore.core.progress as progress
from encore.core.progress import Progress


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_without_a_terminal_a_plain_line_every_n_seconds_with_rate_eta_and_loss(monkeypatch, caplog) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO, logger="encore.progress")
    bar = Progress(1000, "e4srec epoch 1/4", "sample", tty=False, every_s=30)
    clock.t += 10
    bar.update(200, loss=7.2189)  # 10 s in: under the interval, no line yet
    clock.t += 30
    bar.update(600, loss=6.8123)  # 40 s in, 800 done: 20 samples/s, 200 left
    clock.t += 10
    bar.update(200)  # finished: the step's own end line says so, not the progress
    lines = [r.getMessage() for r in caplog.records if r.name == "encore.progress"]
    assert lines == ["e4srec epoch 1/4: 800/1,000 samples (80%), 20.0 samples/s, ETA 10 s, loss 6.812"]


def test_the_interval_comes_from_the_environment_and_zero_turns_lines_off(monkeypatch, caplog) -> None:
    monkeypatch.setenv("ENCORE_PROGRESS_SECONDS", "0")
    caplog.set_level(logging.INFO, logger="encore.progress")
    bar = Progress(10, "scoring", "user", tty=False)
    bar.update(5)
    assert bar.every_s == 0 and not caplog.records
    monkeypatch.setenv("ENCORE_PROGRESS_SECONDS", "not a number")
    assert progress.interval_s() == progress.DEFAULT_INTERVAL_S


def test_on_a_terminal_a_bar_shows_the_work_and_the_loss(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(4, "embed lyrics", "track", tty=True) as bar:
        bar.update(2, loss=0.5)
        bar.update(2)
        assert bar._bar is not None
        shown = str(bar._bar)  # the frame tqdm draws (it redraws at most twice a second)
    assert shown.startswith("embed lyrics: 100%") and "4/4" in shown and "loss=0.500" in shown
    assert "embed lyrics" in capsys.readouterr().err  # drawn on stderr, and cleared on close
