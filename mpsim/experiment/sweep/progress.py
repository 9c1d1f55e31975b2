"""Progress on a stream (stderr): done, failed and the time left; the sweep's points, and the
simulations of a long ``mpsim run`` (there only on a terminal)."""

from __future__ import annotations

import math
import time
from typing import IO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Points done, failures and the time left, on a stream (stderr): one line rewritten in place
    on a terminal, a line every ``interval_s`` otherwise (logs, CI)."""

    def __init__(self, total: int, already: int, stream: IO[str] | None, *, interval_s: float = 10.0,
                 label: str = "sweep", unit: str = "points", count_failures: bool = True) -> None:
        self.label, self.unit, self.count_failures = label, unit, count_failures
        self.total, self.done, self.failed = total, already, 0
        self.to_run = total - already
        self.stream, self.interval_s = stream, interval_s
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.last_shown = -math.inf
        self.width = 0

    @property
    def ran(self) -> int:
        return self.done - (self.total - self.to_run)

    def time_left_s(self) -> float | None:
        if self.ran == 0:
            return None
        return (time.monotonic() - self.started) / self.ran * (self.total - self.done)

    def line(self) -> str:
        left = self.time_left_s()
        return (f"{self.label}: {self.done}/{self.total} {self.unit}, "
                + (f"{self.failed} failed, " if self.count_failures else "") +
                f"{format_duration(time.monotonic() - self.started)} elapsed, "
                + ("done" if self.done >= self.total else "estimating time left" if left is None
                   else f"~{format_duration(left)} left"))

    def update(self, *, done: int = 0, failed: int = 0, final: bool = False) -> None:
        self.done += done
        self.failed += failed
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self.last_shown < (0.2 if self.tty else self.interval_s):
            return
        self.last_shown = now
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width) + ("\n" if final else ""))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (a warning), not overwritten by the bar."""
        if self.stream is not None:
            self.stream.write(("\r" + " " * self.width + "\r" if self.tty else "") + text + "\n")
            self.stream.flush()
            self.last_shown, self.width = -math.inf, 0  # the bar starts again on the next line


