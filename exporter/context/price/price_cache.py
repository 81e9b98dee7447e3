"""Live prices cached on disk in the state directory, so a restart needs no API call.

One small JSON file, `price-cache.json`, rewritten atomically (temporary file in the same
directory, fsync, os.replace): a crash never leaves half a file. A missing, corrupt, oversized,
too deeply nested or unwritable file is logged once and ignored, and so is each entry whose price
is outside price_bounds: the cache only saves API calls, it is never needed.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from exporter.atomic_file import write_atomically
from exporter.config.files import read_regular_file
from exporter.context.errors import LogOnce
from exporter.context.price.price_bounds import price_problem

log = logging.getLogger(__name__)

FILE_NAME = "price-cache.json"
VERSION = 1
MAX_ENTRIES = 64  # one host prices one instance type; a few entries cover spot/on-demand and moves
MAX_FILE_BYTES = 1024 * 1024  # 64 entries take about 10 KiB


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
        self._problems: list[str] = []
        self._load()

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            document = _read_document(self._path)
        except FileNotFoundError:
            return
        except CacheUnreadable as exc:
            self._problems.append("cache_unreadable")
            log.warning("price cache %s unreadable, ignoring it: %s", self._path, exc)
            return
        entries = document.get("entries") if isinstance(document, dict) and document.get("version") == VERSION else None
        if not isinstance(entries, dict):
            self._problems.append("cache_unreadable")
            log.warning("price cache %s has an unknown format, ignoring it", self._path)
            return
        refused: list[str] = []
        for key, item in entries.items():
            price, reason, why = _entry(item)
            if price is None:
                self._problems.append(reason)
                refused.append(f"{key!r}: {why}")
            else:
                self._entries[str(key)] = price
        if refused:
            # One line per load, however many entries a damaged file holds.
            log.warning(
                "price cache %s: ignoring %d entr%s (%s); the next price source is used for them",
                self._path,
                len(refused),
                "y" if len(refused) == 1 else "ies",
                "; ".join(refused[:3]) + ("; ..." if len(refused) > 3 else ""),
            )

    @property
    def load_problems(self) -> tuple[str, ...]:
        """Error reasons found while loading, one per problem: cache_unreadable, cache_bad_entry, price_out_of_bounds."""
        return tuple(self._problems)

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
        try:
            # allow_nan=False: the file stays strict JSON even if a bad price ever got this far.
            text = json.dumps({"version": VERSION, "entries": entries}, indent=1, sort_keys=True, allow_nan=False)
            write_atomically(self._path, text)
        except (OSError, ValueError) as exc:
            self._once.log(
                "write",
                logging.WARNING,
                "cannot write the price cache %s (%s); prices will be fetched again after a restart",
                self._path,
                getattr(exc, "strerror", None) or exc,
            )
            return False
        self._once.forget("write")
        return True


class CacheUnreadable(Exception):
    """The cache file cannot be used at all; the message says why."""


def _read_document(path: Path) -> object:
    """The parsed file; FileNotFoundError when absent, CacheUnreadable for anything else wrong."""
    try:
        raw = read_regular_file(path, MAX_FILE_BYTES)  # a FIFO in its place must not hang the start
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CacheUnreadable(exc.strerror or str(exc)) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CacheUnreadable(f"larger than {MAX_FILE_BYTES} bytes, far more than {MAX_ENTRIES} prices need")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CacheUnreadable("JSON nested too deeply") from None
    except ValueError as exc:  # not UTF-8, not JSON, an integer of more than 4300 digits
        raise CacheUnreadable(str(exc)[:200]) from None


def _entry(item: object) -> tuple[CachedPrice | None, str, str]:
    """One cached price, or None with the error reason and why it was refused."""
    malformed = "not an object with dollars_per_hour, source, lifecycle and fetched_at"
    if not isinstance(item, dict):
        return None, "cache_bad_entry", malformed
    try:
        price = CachedPrice(
            dollars_per_hour=float(item["dollars_per_hour"]),
            source=str(item["source"]),
            lifecycle=str(item["lifecycle"]),
            fetched_at=float(item["fetched_at"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond a float
        return None, "cache_bad_entry", malformed
    if not math.isfinite(price.fetched_at):
        return None, "cache_bad_entry", f"fetched_at {price.fetched_at!r} is not a time"
    problem = price_problem(price.dollars_per_hour)
    if problem is not None:
        return None, "price_out_of_bounds", problem
    return price, "", ""
