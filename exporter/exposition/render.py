"""Render only what a scrape asks for, once per snapshot, and serve the cached bytes to every scrape.

Prometheus scrapes once per interval, so nearly every scrape is the first one of a new snapshot.
A snapshot is therefore rendered only when scraped, and only in the format (text 0.0.4 or
OpenMetrics) and encoding (plain or gzip) that scrape asked for; each (format, encoding) is built
at most once per snapshot and concurrent scrapers of it share one render. Nothing is rendered
speculatively: a poll nobody scrapes costs no rendering at all.

Rendering runs on the render thread, never on the event loop, and starts from the previous
render's lines (exporter.exposition.lines), so its cost follows what changed.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.accounting.snapshot import Snapshot
from exporter.exposition.lines import LineKeeper, SampleLines
from exporter.workers import SerialDaemonExecutor

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = CONTENT_TYPE_LATEST
# Chosen by measurement (bench/scrape_cadence.py --gzip-levels, docs/benchmarks.md): on the
# 64-GPU body level 1 costs a fraction of level 6's CPU for a body a few KiB larger.
GZIP_LEVEL = 1
_EOF = "# EOF\n"

# (openmetrics, gzipped)
Variant = tuple[bool, bool]


@dataclass(frozen=True)
class Rendered:
    """One snapshot in one format and one encoding."""

    body: bytes
    content_type: str
    gzipped: bool
    version: int


class Renderer:
    """Snapshot to bytes; one thread at a time (the render thread, or a synchronous caller)."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self._keeper = LineKeeper()
        self._lines: SampleLines | None = None
        self._plain: dict[bool, Rendered] = {}  # the last body per format, so both encodings are one document
        self.renders = 0  # bodies built (at most one per format and snapshot); for tests and benchmarks
        self._process: CollectorRegistry | None = None
        if process_metrics:
            self._process = CollectorRegistry(auto_describe=False)
            ProcessCollector(registry=self._process)

    def _sample_lines(self, snapshot: Snapshot) -> SampleLines:
        if self._lines is None or self._lines.version != snapshot.version:
            self._lines = self._keeper.lines(snapshot)
        return self._lines

    def plain(self, snapshot: Snapshot, openmetrics: bool) -> Rendered:
        """The uncompressed body of `snapshot` in one format, built at most once."""
        kept = self._plain.get(openmetrics)
        if kept is not None and kept.version == snapshot.version:
            return kept
        self.renders += 1
        text = self._sample_lines(snapshot).body(openmetrics=openmetrics)
        if openmetrics:
            if self._process is not None:
                # The process metrics are six series read from /proc: prometheus-client renders them.
                text += generate_openmetrics(self._process).decode().removesuffix(_EOF)  # type: ignore[no-untyped-call]
            text += _EOF
        elif self._process is not None:
            text += generate_latest(self._process).decode()
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        rendered = self._plain[openmetrics] = Rendered(text.encode(), content_type, False, snapshot.version)
        return rendered


def gzipped(plain: Rendered) -> Rendered:
    """The same document gzipped (mtime 0, so equal documents give equal bytes)."""
    body = gzip.compress(plain.body, compresslevel=GZIP_LEVEL, mtime=0)
    return Rendered(body, plain.content_type, True, plain.version)


class RenderCache:
    """The latest snapshot and whatever variants of it scrapes have asked for."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self._renderer = Renderer(process_metrics=process_metrics)
        self._latest: Snapshot | None = None
        # The newest rendering of each variant asked for: the fresh answer, or the fallback if a render fails.
        self._done: dict[Variant, Rendered] = {}
        self._inflight: dict[Variant, tuple[int, asyncio.Future[tuple[Rendered, Rendered]]]] = {}
        self._executor: SerialDaemonExecutor | None = None

    @property
    def version(self) -> int:
        """Version of the latest published snapshot (0 before the first)."""
        return self._latest.version if self._latest is not None else 0

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` the one scrapes see. Renders nothing: the first scrape that wants it does."""
        self._latest = snapshot

    def _fresh(self, variant: Variant) -> Rendered | None:
        done = self._done.get(variant)
        if done is not None and self._latest is not None and done.version == self._latest.version:
            return done
        return None

    @property
    def renders(self) -> int:
        """Bodies built so far (at most one per format and snapshot); for tests and benchmarks."""
        return self._renderer.renders

    def _render(self, snapshot: Snapshot, variant: Variant) -> tuple[Rendered, Rendered]:
        """(plain body, the variant asked for) of `snapshot`: the render thread's or a synchronous caller's work."""
        openmetrics, want_gzip = variant
        plain = self._renderer.plain(snapshot, openmetrics)
        return plain, gzipped(plain) if want_gzip else plain

    def _keep(self, rendered: tuple[Rendered, Rendered]) -> Rendered:
        for one in rendered:
            variant = (one.content_type == OPENMETRICS_CONTENT_TYPE, one.gzipped)
            current = self._done.get(variant)
            if current is None or one.version >= current.version:
                self._done[variant] = one
        return rendered[1]

    def get_now(self, *, openmetrics: bool, gzipped: bool = False) -> Rendered | None:
        """The latest snapshot in one variant, rendered on the calling thread if needed (tests, benchmarks)."""
        variant = (openmetrics, gzipped)
        snapshot = self._latest
        if snapshot is None:
            return None
        done = self._fresh(variant)
        if done is None:
            done = self._keep(self._render(snapshot, variant))
        return done

    def text(self) -> Rendered | None:
        """The text format 0.0.4, uncompressed, or None before the first snapshot."""
        return self.get_now(openmetrics=False)

    def openmetrics(self) -> Rendered | None:
        """OpenMetrics 1.0.0, uncompressed, or None before the first snapshot."""
        return self.get_now(openmetrics=True)

    @property
    def latest(self) -> Snapshot | None:
        """The latest published snapshot, rendered or not (the landing page reads it)."""
        return self._latest

    async def get(self, openmetrics: bool, gzipped: bool = False) -> Rendered | None:
        """The latest snapshot in one variant, rendering it on the render thread if nobody has yet.

        Concurrent scrapes of a new snapshot share one render. If rendering fails, the previous
        bytes of that format are served (and the error logged): a scrape never fails because of
        one bad snapshot.
        """
        variant = (openmetrics, gzipped)
        snapshot = self._latest
        if snapshot is None:
            return None
        done = self._fresh(variant)
        if done is not None:
            return done
        try:
            rendered = await asyncio.shield(self._start(snapshot, variant))
        except Exception:
            log.exception("rendering snapshot %d failed; serving the previous one", snapshot.version)
            # A plain body is good for any client; a gzipped one only for a client that asked for gzip.
            return self._done.get(variant) or self._done.get((openmetrics, False))
        return self._keep(rendered)

    def _start(self, snapshot: Snapshot, variant: Variant) -> asyncio.Future[tuple[Rendered, Rendered]]:
        inflight = self._inflight.get(variant)
        if inflight is not None and inflight[0] == snapshot.version:
            return inflight[1]
        if self._executor is None:
            self._executor = SerialDaemonExecutor("render")
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._render, snapshot, variant)
        self._inflight[variant] = (snapshot.version, future)
        return future
