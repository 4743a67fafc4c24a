"""Waiting on a run or sweep: a bar on a terminal, a few plain lines anywhere else (tasks/progress.py)."""

from __future__ import annotations

import io
import os
import select

import pytest

from tasks.progress import WaitProgress


def test_off_a_terminal_one_line_per_state_change_and_per_tenth():
    stream = io.StringIO()
    with WaitProgress("run r1", "step", stream=stream, interval=3600) as shown:
        shown.update(0, None, "prepare_data")
        shown.update(0, None, "prepare_data")  # nothing new: no line
        for step in range(1, 201):  # 200 polls of the training stage
            shown.update(step, 200, "train", f"loss={5 - step / 100:.2f}")
        shown.update(200, 200, "evaluate")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0] == "run r1: prepare_data 0 steps"
    assert lines[1] == "run r1: train 1/200 steps loss=4.99"
    assert sum(line.startswith("run r1: train") for line in lines) == 11  # the first, then each tenth
    assert lines[-1] == "run r1: evaluate 200/200 steps"


def test_off_a_terminal_a_line_after_the_interval_even_without_change():
    stream = io.StringIO()
    shown = WaitProgress("sweep s1", "trial", stream=stream, interval=0.0)
    shown.update(0, None, "running=2")
    shown.update(0, None, "running=2")
    assert stream.getvalue().count("sweep s1: running=2") == 2


def test_disabled_writes_nothing():
    stream = io.StringIO()
    WaitProgress("run r1", "step", enabled=False, stream=stream).update(5, 10, "train")
    assert stream.getvalue() == ""


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_on_a_terminal_a_redrawing_bar():
    leader, follower = os.openpty()
    with open(follower, "w", encoding="utf-8") as terminal:
        with WaitProgress("run r1", "step", stream=terminal) as shown:
            for step in range(1, 4):
                shown.update(step, 3, "train")
        terminal.flush()
        written = b""
        while select.select([leader], [], [], 0.5)[0]:  # everything written so far, however many reads it takes
            chunk = os.read(leader, 65536)
            if not chunk:
                break
            written += chunk
    os.close(leader)
    written = written.decode()
    assert "\r" in written and "run r1" in written and "3/3" in written
