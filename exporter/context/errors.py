"""Error bookkeeping for the context collectors (`price`, `metadata`).

Counts feed `accel_exporter_errors_total{collector, reason}`. Messages that would repeat on every
refresh (no credentials, no permission, no metadata service) are logged once at warning and then
at debug, so a host without a cloud never fills its journal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType


class ErrorCounts:
    """Cumulative error counts by (collector, reason); safe to bump from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, collector: str, reason: str, count: int = 1) -> None:
        """Count `count` errors of `reason` for `collector`."""
        with self._lock:
            key = (collector, reason)
            self._counts[key] = self._counts.get(key, 0) + count

    def snapshot(self) -> Mapping[tuple[str, str], int]:
        """A read-only copy of the counts."""
        with self._lock:
            return MappingProxyType(dict(self._counts))


class LogOnce:
    """Logs each key's first message at the given level and any repeat at debug."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def log(self, key: str, level: int, message: str, *args: object) -> None:
        """Log `message` at `level` the first time `key` is seen, at debug afterwards."""
        with self._lock:
            first = key not in self._seen
            self._seen.add(key)
        self._logger.log(level if first else logging.DEBUG, message, *args)

    def forget(self, key: str) -> None:
        """Log `key` loudly again next time (the condition cleared, e.g. credentials came back)."""
        with self._lock:
            self._seen.discard(key)
