"""Live prices cached on disk in the state directory, so a restart needs no API call.

One small JSON file, `price-cache.json`, rewritten atomically (temporary file in the same
directory, fsync, os.replace): a crash never leaves half a file. A missing, corrupt or
unwritable file is logged once and ignored: the cache only saves API calls, it is never needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from exporter.context.errors import LogOnce

log = logging.getLogger(__name__)

FILE_NAME = "price-cache.json"
VERSION = 1
MAX_ENTRIES = 64  # one host prices one instance type; a few entries cover spot/on-demand and moves


@dataclass(frozen=True)
class CachedPrice:
    """A live price and when it was fetched (Unix time)."""

    dollars_per_hour: float
    source: str
    lifecycle: str
    fetched_at: float


def cache_key(provider: str, instance_type: str, region: str, lifecycle: str, zone: str = "") -> str:
    """The key of one price: spot prices are per zone, on-demand prices per region."""
    return "|".join((provider, instance_type, region, zone if lifecycle == "spot" else "", lifecycle))


class PriceCache:
    """The on-disk cache; thread-safe (lookups run in worker threads)."""

    def __init__(self, directory: str | None) -> None:
        self._path = Path(directory) / FILE_NAME if directory else None
        self._entries: dict[str, CachedPrice] = {}
        self._lock = threading.Lock()
        self._once = LogOnce(log)
        self._load()

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("price cache %s unreadable, ignoring it: %s", self._path, exc)
            return
        entries = document.get("entries") if isinstance(document, dict) and document.get("version") == VERSION else None
        if not isinstance(entries, dict):
            log.warning("price cache %s has an unknown format, ignoring it", self._path)
            return
        for key, item in entries.items():
            try:
                price = CachedPrice(
                    dollars_per_hour=float(item["dollars_per_hour"]),
                    source=str(item["source"]),
                    lifecycle=str(item["lifecycle"]),
                    fetched_at=float(item["fetched_at"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(price.dollars_per_hour) and price.dollars_per_hour > 0 and math.isfinite(price.fetched_at):
                self._entries[str(key)] = price

    def get(self, key: str) -> CachedPrice | None:
        """The cached price for `key`, whatever its age."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, price: CachedPrice) -> bool:
        """Remember a price and rewrite the file; False (logged once) when the file cannot be written."""
        with self._lock:
            self._entries[key] = price
            if len(self._entries) > MAX_ENTRIES:
                oldest = sorted(self._entries, key=lambda k: self._entries[k].fetched_at)
                for stale in oldest[: len(self._entries) - MAX_ENTRIES]:
                    del self._entries[stale]
            snapshot = {k: vars(v) for k, v in self._entries.items()}
        return self._write(snapshot)

    def _write(self, entries: dict[str, dict[str, object]]) -> bool:
        if self._path is None:
            return True
        text = json.dumps({"version": VERSION, "entries": entries}, indent=1, sort_keys=True)
        tmp_name: str | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".price-cache.", suffix=".tmp", dir=self._path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, self._path)
            tmp_name = None
            self._once.forget("write")
            return True
        except OSError as exc:
            self._once.log(
                "write",
                logging.WARNING,
                "cannot write the price cache %s (%s); prices will be fetched again after a restart",
                self._path,
                exc.strerror or exc,
            )
            return False
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
