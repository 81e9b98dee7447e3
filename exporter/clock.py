"""Time sources. Accounting and the simulator take a clock so tests can run a day in seconds."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (Unix seconds) and monotonic time, both as floats."""

    def time(self) -> float:
        """Unix time in seconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        """Unix time in seconds."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds from time.monotonic()."""
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; wall time is `epoch + monotonic`."""

    def __init__(self, epoch: float = 1_800_000_000.0, start: float = 0.0) -> None:
        self._epoch = epoch
        self._now = start

    def time(self) -> float:
        """Unix time in seconds."""
        return self._epoch + self._now

    def monotonic(self) -> float:
        """Simulated seconds since the start."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward; moving backwards is a bug in the caller."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
