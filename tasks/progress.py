"""Progress of a run or sweep being waited on: a bar on a terminal, a few plain lines anywhere else.

Off a terminal (CI, ``nohup``, a log file, the systemd journal) a redrawing bar is noise: one check that followed two
runs for 14 minutes wrote 366 KB of carriage-return redraws. There, a line is written when the state changes (a
stage starts, a trial ends) and otherwise at most every ``interval`` seconds or each tenth of the way.
"""

from __future__ import annotations

import sys
import time
from typing import IO


class WaitProgress:
    """``update()`` it with every poll; ``close()`` it at the end (or use it as a context manager).

    Args:
        desc: What is being waited on (``run run-1234``).
        unit: What ``done`` and ``total`` count (``step``, ``trial``).
        enabled: False writes nothing at all.
        stream: Where to write (default stderr); a bar only when it is a terminal.
        interval: Most seconds between two plain lines while nothing changes.
    """

    def __init__(
        self, desc: str, unit: str, enabled: bool = True, stream: IO[str] | None = None, interval: float = 30.0
    ):
        self.desc, self.unit, self.interval = desc, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        terminal = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.plain = enabled and not terminal
        self._bar = None
        if terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=desc, unit=unit, file=self.stream)
        self._last_state: str | None = None
        self._last_time = 0.0
        self._last_tenth = -1

    def update(self, done: int, total: int | None, state: str, detail: str = "") -> None:
        """Report ``done`` of ``total`` (None: unknown) in ``state`` (a stage, ``running``), with ``detail``."""
        if self._bar is not None:
            if total:
                self._bar.total = total
            self._bar.n = done
            self._bar.set_postfix_str(" ".join(part for part in (state, detail) if part), refresh=False)
            self._bar.refresh()
            return
        if not self.plain:
            return
        tenth = int(10 * done / total) if total else -1
        now = time.monotonic()
        if state != self._last_state or tenth > self._last_tenth or now - self._last_time >= self.interval:
            amount = f"{done}/{total} {self.unit}s" if total else f"{done} {self.unit}s"
            line = f"{self.desc}: {state} {amount}" + (f" {detail}" if detail else "")
            print(line, file=self.stream, flush=True)
            self._last_state, self._last_time, self._last_tenth = state, now, max(tenth, self._last_tenth)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> WaitProgress:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
