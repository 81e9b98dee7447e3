"""Render at most once per snapshot, serve cached bytes to every scrape.

Scrape cost must not grow with the number of scrapers: a snapshot is rendered (both formats,
plain and gzipped) once, on the render thread, and every scrape of it awaits or reuses the same
bytes. When the previous snapshot was scraped, the next one is rendered as soon as it is
published, so busy scrapers never wait; polls nobody scrapes are never rendered (at a 1 s poll
and a 15 s scrape interval, about 13 renders saved out of 15). The event loop never renders, so
a big host's render (tens of ms for 64 GPUs) cannot stall scrapes or probes.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.accounting.snapshot import Snapshot
from exporter.exposition.collector import SnapshotCollector
from exporter.workers import SerialDaemonExecutor

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Rendered:
    """One encoding of one snapshot, plain and gzipped."""

    body: bytes
    gzipped: bytes
    content_type: str


def _pack(body: bytes, content_type: str) -> Rendered:
    # Level 6 is a good size/CPU balance; this runs once per snapshot, not per scrape.
    return Rendered(body, gzip.compress(body, compresslevel=6, mtime=0), content_type)


class _Collected:
    """Already collected families, shaped like a registry for the encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class RenderCache:
    """Holds the latest snapshot's rendered bytes."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self._collector = SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        if process_metrics:
            ProcessCollector(registry=self._registry)
        self._text: Rendered | None = None
        self._openmetrics: Rendered | None = None
        self.version = 0
        self._latest: Snapshot | None = None
        self._inflight: asyncio.Future[tuple[Rendered, Rendered]] | None = None
        self._inflight_version = -1
        self._executor: SerialDaemonExecutor | None = None
        self._scraped = False  # whether anyone asked since the last publish

    def _encode(self, snapshot: Snapshot) -> tuple[Rendered, Rendered]:
        # One thread at a time (the render thread, or the caller of `update`).
        self._collector.set(snapshot)
        families = _Collected(list(self._registry.collect()))  # build the families once, encode twice
        text = _pack(generate_latest(families), TEXT_CONTENT_TYPE)
        openmetrics = _pack(generate_openmetrics(families), OPENMETRICS_CONTENT_TYPE)  # type: ignore[no-untyped-call]
        return text, openmetrics

    def update(self, snapshot: Snapshot) -> None:
        """Render a snapshot now, on the calling thread (start-up, tests, benchmarks)."""
        text, openmetrics = self._encode(snapshot)
        # Readers on the event loop see either the old or the new rendering, never a half-built one.
        self._text, self._openmetrics, self.version = text, openmetrics, snapshot.version
        self._latest = snapshot

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` the one scrapes see (event loop only); rendered now if the last one was scraped."""
        self._latest = snapshot
        if self._scraped:
            self._scraped = False
            self._start_render(snapshot)

    def _start_render(self, snapshot: Snapshot) -> asyncio.Future[tuple[Rendered, Rendered]]:
        if self._inflight is None or self._inflight_version != snapshot.version:
            if self._executor is None:
                self._executor = SerialDaemonExecutor("render")
            self._inflight = asyncio.get_running_loop().run_in_executor(self._executor, self._encode, snapshot)
            self._inflight_version = snapshot.version
        return self._inflight

    async def get(self, openmetrics: bool) -> Rendered | None:
        """The latest snapshot in one format, rendering it on the render thread if nobody has yet.

        Concurrent scrapes of a new snapshot share one render. If rendering fails, the previous
        bytes are served (and the error logged): a scrape never fails because of one bad snapshot.
        """
        self._scraped = True
        snapshot = self._latest
        if snapshot is not None and snapshot.version != self.version:
            try:
                text, om = await asyncio.shield(self._start_render(snapshot))
            except Exception:
                log.exception("rendering snapshot %d failed; serving the previous one", snapshot.version)
            else:
                if snapshot.version > self.version:
                    self._text, self._openmetrics, self.version = text, om, snapshot.version
        return self._openmetrics if openmetrics else self._text

    def text(self) -> Rendered | None:
        """The text format 0.0.4, or None before the first snapshot."""
        return self._text

    def openmetrics(self) -> Rendered | None:
        """OpenMetrics 1.0.0, or None before the first snapshot."""
        return self._openmetrics

    @property
    def latest(self) -> Snapshot | None:
        """The latest published snapshot, rendered or not (the landing page reads it)."""
        return self._latest
