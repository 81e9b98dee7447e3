"""Render once per snapshot, serve cached bytes to every scrape.

Scrape cost must not grow with the number of scrapers: both formats (plain and gzipped) are
rendered right after each poll, by the daemon on a worker thread so a big host's render (tens of
ms for 64 GPUs) never stalls the event loop that answers scrapes. Prometheus asks for OpenMetrics,
so rendering it lazily on the first scrape would put that stall back on the scrape path.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.accounting.snapshot import Snapshot
from exporter.exposition.collector import SnapshotCollector

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

    def update(self, snapshot: Snapshot) -> None:
        """Render both formats for a new snapshot; safe to call from one worker thread at a time."""
        self._collector.set(snapshot)
        families = _Collected(list(self._registry.collect()))  # build the families once, encode twice
        text = _pack(generate_latest(families), TEXT_CONTENT_TYPE)
        openmetrics = _pack(generate_openmetrics(families), OPENMETRICS_CONTENT_TYPE)  # type: ignore[no-untyped-call]
        # Readers on the event loop see either the old or the new rendering, never a half-built one.
        self._text, self._openmetrics = text, openmetrics
        self.version = snapshot.version

    def text(self) -> Rendered | None:
        """The text format 0.0.4, or None before the first snapshot."""
        return self._text

    def openmetrics(self) -> Rendered | None:
        """OpenMetrics 1.0.0, or None before the first snapshot."""
        return self._openmetrics
