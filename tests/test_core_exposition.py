"""Exposition: fresh families per snapshot, one render per snapshot, and the HTTP endpoints."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.accounting.ledger import Ledger
from exporter.accounting.snapshot import Snapshot
from exporter.clock import ManualClock
from exporter.config import Config
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.provider import ContextProvider
from exporter.daemon import Daemon, Options
from exporter.exposition import render
from exporter.exposition.collector import SnapshotCollector, build_families
from exporter.exposition.render import RenderCache
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.web.server import build_app

CONTEXT = HostContext(
    HostIdentity(provider="aws", instance_type="g6.12xlarge", tags=(("Team", "search"),)),
    PriceQuote(8.0, "config"),
    RuleAttributor(AttributionSettings()),
)


def gpu(n: int) -> DeviceIdentity:
    return DeviceIdentity(f"nvidia{n}", f"GPU-{n}", "nvidia", "NVIDIA L4", "gpu", "", "550.54.15")


def report(*readings: DeviceReading, complete: bool = True) -> SourceReport:
    return SourceReport("nvml", tuple(readings), True, 0.01, 1_800_000_000.0, complete=complete)


def reading(n: int, *pids: int, utilization: float = 0.5) -> DeviceReading:
    procs = tuple(ProcessReading(pid, 2**30, "alice", "python x.py", 1_700_000_000.0) for pid in pids)
    return DeviceReading(
        gpu(n), True, busy_seconds=utilization * 5, covered_seconds=5.0, utilization=utilization, processes=procs
    )


def series(snapshot: Snapshot) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for f in build_families(snapshot) for s in f.samples}


def with_label(found: set[tuple[str, tuple[tuple[str, str], ...]]], name: str, **labels: str) -> bool:
    return any(n == name and set(labels.items()) <= set(lab) for n, lab in found)


# --- the collector -------------------------------------------------------------------------------


def test_vanished_process_and_device_vanish_from_output() -> None:
    ledger = Ledger(AccountingSettings())
    ledger.ingest(report(reading(0, 11, 12), reading(1, 21)), CONTEXT, 0.0)
    first = series(ledger.snapshot(0.0))
    assert with_label(first, "accel_process_info", device="nvidia0", pid="12")
    assert with_label(first, "accel_process_memory_used_bytes", device="nvidia0", pid="12")
    assert with_label(first, "accel_process_start_time_seconds", device="nvidia0", pid="12")
    assert with_label(first, "accel_device_info", device="nvidia1")
    ledger.ingest(report(reading(0, 11)), CONTEXT, 5.0)  # pid 12 exited, nvidia1 is gone (MIG reconfigured)
    second = series(ledger.snapshot(5.0))
    assert with_label(second, "accel_process_info", device="nvidia0", pid="11")
    assert not any(dict(lab).get("pid") == "12" for _, lab in second)
    assert not any(dict(lab).get("device") == "nvidia1" for _, lab in second)


def test_incomplete_report_keeps_known_devices() -> None:
    ledger = Ledger(AccountingSettings())
    ledger.ingest(report(reading(0), reading(1)), CONTEXT, 0.0)
    ledger.ingest(report(reading(0), complete=False), CONTEXT, 5.0)
    assert {d.identity.device for d in ledger.snapshot(5.0).devices} == {"nvidia0", "nvidia1"}


def test_collector_builds_fresh_families_every_time() -> None:
    ledger = Ledger(AccountingSettings())
    ledger.ingest(report(reading(0, 11)), CONTEXT, 0.0)
    collector = SnapshotCollector(ledger.snapshot(0.0))
    a = list(collector.collect())
    b = list(collector.collect())
    assert [f.name for f in a] == [f.name for f in b]
    assert all(x is not y for x, y in zip(a, b, strict=True))
    assert collector.describe() == []
    assert list(SnapshotCollector().collect()) == []


def test_families_are_typed_from_the_catalogue() -> None:
    from exporter.catalogue import BY_NAME

    ledger = Ledger(AccountingSettings())
    ledger.ingest(report(reading(0, 11)), CONTEXT, 0.0)
    ledger.ingest(report(reading(0, 11)), CONTEXT, 5.0)
    for family in build_families(ledger.snapshot(5.0)):
        name = family.name + "_total" if family.type == "counter" else family.name
        entry = BY_NAME[name]
        assert family.type == entry.type
        assert family.documentation == entry.help
        for sample in family.samples:
            assert tuple(sample.labels) == entry.labels


def test_utilization_absent_when_unknown() -> None:
    ledger = Ledger(AccountingSettings())
    mig = DeviceIdentity("nvidia0-mig1", "MIG-1", "nvidia", "A100 MIG 3g", "mig", "nvidia0", physical=False)
    ledger.ingest(report(DeviceReading(mig, True, memory_used_bytes=1, memory_total_bytes=2)), CONTEXT, 0.0)
    found = series(ledger.snapshot(0.0))
    assert not any(n in ("accel_utilization_ratio", "accel_busy_seconds_total") for n, _ in found)
    assert with_label(found, "accel_device_info", device="nvidia0-mig1", kind="mig", parent="nvidia0")


# --- the render cache ----------------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(render, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(render, name, wrapper)
    return calls


def snapshots(count: int) -> list[Snapshot]:
    ledger = Ledger(AccountingSettings())
    out = []
    for t in range(count):
        ledger.ingest(report(reading(0, 11), reading(1)), CONTEXT, float(t))
        out.append(ledger.snapshot(float(t)))
    return out


def test_render_once_per_snapshot_and_only_what_is_asked() -> None:
    cache = RenderCache()
    assert cache.text() is None and cache.openmetrics() is None
    first, second = snapshots(2)
    cache.publish(first)
    assert cache.renders == 0  # publishing renders nothing
    bodies = {id(cache.text().body) for _ in range(50)}  # type: ignore[union-attr]
    assert len(bodies) == 1 and cache.renders == 1  # the text format, once
    om = [cache.openmetrics() for _ in range(5)]
    assert cache.renders == 2 and all(x is om[0] for x in om)
    cache.publish(second)
    assert cache.renders == 2 and cache.version == second.version
    assert cache.openmetrics() is not om[0] and cache.renders == 3  # text of `second` is still not rendered


def test_gzip_is_the_same_document() -> None:
    cache = RenderCache()
    cache.publish(snapshots(1)[0])
    text = cache.text()
    packed = cache.get_now(openmetrics=False, gzipped=True)
    assert text is not None and packed is not None and packed.gzipped and not text.gzipped
    assert gzip.decompress(packed.body) == text.body
    families = {f.name for f in text_string_to_metric_families(text.body.decode())}
    assert {"accel_device_info", "accel_busy_seconds", "process_cpu_seconds"} <= families


async def test_a_scrape_renders_only_its_format_and_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[bool] = []
    original = render.Renderer.plain

    def recording(self: render.Renderer, snapshot: Snapshot, openmetrics: bool) -> render.Rendered:
        built.append(openmetrics)
        return original(self, snapshot, openmetrics)

    monkeypatch.setattr(render.Renderer, "plain", recording)
    packs = counting(monkeypatch, "gzipped")
    cache = RenderCache()
    first, second = snapshots(2)
    cache.publish(first)
    for _ in range(3):  # what Prometheus asks for: OpenMetrics, gzipped
        got = await cache.get(openmetrics=True, gzipped=True)
        assert got is not None and got.gzipped and gzip.decompress(got.body).endswith(b"# EOF\n")
    assert built == [True] and len(packs) == 1  # no text format, one compression
    cache.publish(second)
    assert built == [True]  # no speculative render of the next snapshot, although the last was scraped
    await cache.get(openmetrics=True, gzipped=True)
    assert built == [True, True] and len(packs) == 2


async def test_a_failed_render_serves_the_previous_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = RenderCache()
    first, second = snapshots(2)
    cache.publish(first)
    packed = await cache.get(openmetrics=False, gzipped=True)
    plain = await cache.get(openmetrics=True, gzipped=False)
    assert packed is not None and plain is not None

    def broken(self: render.Renderer, snapshot: Snapshot, openmetrics: bool) -> render.Rendered:
        raise ValueError("a bad snapshot")

    monkeypatch.setattr(render.Renderer, "plain", broken)
    cache.publish(second)
    assert await cache.get(openmetrics=False, gzipped=True) is packed
    # A variant never rendered falls back to the plain body of its format, which any client can read.
    assert await cache.get(openmetrics=True, gzipped=True) is plain


# --- HTTP ----------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def http() -> AsyncIterator[Callable[..., Any]]:
    clients: list[TestClient[Any, Any]] = []

    async def make(cache: RenderCache, ready: Callable[[], bool], path: str = "/metrics") -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(
            TestServer(build_app(cache, ready, path)),
            auto_decompress=False,
            headers={"Accept-Encoding": "identity"},  # aiohttp asks for gzip by default
        )
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_ready_is_503_before_the_first_poll_and_200_after(http: Callable[..., Any]) -> None:
    cache = RenderCache()
    state = {"ready": False}
    client = await http(cache, lambda: state["ready"])
    response = await client.get("/-/ready")
    assert response.status == 503
    response = await client.get("/metrics")
    assert response.status == 503
    assert (await client.get("/-/healthy")).status == 200  # alive even before data
    cache.publish(snapshots(1)[0])
    state["ready"] = True
    assert (await client.get("/-/ready")).status == 200
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    assert response.headers["Server"] == "accel-cost-exporter"  # no version (issue 13)


async def test_scrapes_serve_the_cached_bytes(http: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch, "generate_latest")
    cache = RenderCache()
    cache.publish(snapshots(1)[0])
    client = await http(cache, lambda: True)
    bodies = [await (await client.get("/metrics")).read() for _ in range(20)]
    assert len(set(bodies)) == 1 and bodies[0] == cache.text().body  # type: ignore[union-attr]
    assert len(calls) == 1  # scrapes never render


async def test_openmetrics_on_request(http: Callable[..., Any]) -> None:
    cache = RenderCache()
    cache.publish(snapshots(2)[1])
    client = await http(cache, lambda: True)
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    body = (await response.read()).decode()
    assert body.endswith("# EOF\n")
    assert "accel_busy_seconds_total" in body
    plain = await (await client.get("/metrics", headers={"Accept": "text/plain"})).read()
    assert b"# EOF" not in plain


@pytest.mark.parametrize(
    ("encoding", "gzipped"),
    [("gzip", True), ("gzip, deflate, br", True), ("*", True), ("gzip;q=0", False), ("identity", False), ("", False)],
)
async def test_gzip_when_asked(http: Callable[..., Any], encoding: str, gzipped: bool) -> None:
    cache = RenderCache()
    cache.publish(snapshots(1)[0])
    client = await http(cache, lambda: True)
    response = await client.get("/metrics", headers={"Accept-Encoding": encoding})
    body = await response.read()
    assert response.status == 200
    assert response.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
    assert "Accept-Encoding" in response.headers["Vary"]
    text = cache.text()
    assert text is not None
    assert (gzip.decompress(body) if gzipped else body) == text.body


async def test_openmetrics_gzipped(http: Callable[..., Any]) -> None:
    cache = RenderCache()
    cache.publish(snapshots(1)[0])
    client = await http(cache, lambda: True)
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"}
    )
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()).endswith(b"# EOF\n")


async def test_landing_page_probes_and_404(http: Callable[..., Any]) -> None:
    cache = RenderCache()
    cache.publish(snapshots(1)[0])
    client = await http(cache, lambda: True, "/stats")
    landing = await client.get("/")
    assert landing.status == 200
    page = (await landing.read()).decode()
    assert 'href="/stats"' in page and 'href="/-/healthy"' in page
    assert (await client.get("/stats")).status == 200
    assert (await client.get("/metrics")).status == 404  # only the configured telemetry path
    assert (await client.get("/nope")).status == 404
    assert (await client.get("/-/healthy")).status == 200
    assert (await (await client.get("/-/healthy")).read()) == b"OK\n"
    assert (await client.post("/stats")).status == 405


# --- the daemon's poll path, in process ----------------------------------------------------------


@asynccontextmanager
async def demo_daemon(demo: str, clock: ManualClock) -> AsyncIterator[Daemon]:
    """A Daemon on the `demo` scenario with its sources built and its context started; its sources stop after."""
    daemon = Daemon(Options(demo=demo, interval=5.0), Config(), clock)
    daemon._build_sources()
    daemon.provider = ContextProvider(Config(), clock, daemon.environment)
    await daemon.provider.start()
    try:
        yield daemon
    finally:
        for source in daemon.sources:
            await source.stop()


async def test_daemon_poll_publishes_and_churn_vanishes() -> None:
    clock = ManualClock()
    async with demo_daemon("g6-inference", clock) as daemon:
        for source in daemon.sources:
            await source.start()

        async def scrape(dt: float) -> str:
            clock.advance(dt)
            await daemon.poll_once()
            text = await daemon.cache.get(openmetrics=False)  # what the next scrape serves
            assert text is not None
            return text.body.decode()

        body = await scrape(1.0)
        assert 'pid="4000"' in body and 'pid="3104"' in body
        body = await scrape(9.0)  # t=10: the batch job exited
        assert 'pid="4000"' not in body and 'pid="3104"' in body
        body = await scrape(11.0)  # t=21: a new one
        assert 'pid="4001"' in body
        assert 'accel_instance_info{instance_id="i-0a1b2c3d4e5f60718",instance_type="g6.12xlarge"' in body
        assert 'accel_exporter_collector_success{collector="nvml"} 1.0' in body


async def test_daemon_renders_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    original = render.Renderer.plain

    def recording(self: render.Renderer, snapshot: Snapshot, openmetrics: bool) -> render.Rendered:
        if openmetrics:
            threads.append(threading.current_thread().name)
        return original(self, snapshot, openmetrics)

    monkeypatch.setattr(render.Renderer, "plain", recording)
    clock = ManualClock()
    async with demo_daemon("p4d-idle-fleet", clock) as daemon:
        for _ in range(3):
            clock.advance(5.0)
            await daemon.poll_once()
        assert threads == []  # polls nobody scrapes are never rendered
        for _ in range(3):
            clock.advance(5.0)
            await daemon.poll_once()
            # Ten concurrent scrapes of a new snapshot share one render.
            bodies = await asyncio.gather(*(daemon.cache.get(openmetrics=i % 2 == 0) for i in range(10)))
            assert all(b is not None for b in bodies)
        clock.advance(5.0)
        await daemon.poll_once()  # the last snapshot was scraped: the next one is still not rendered ahead
        await asyncio.sleep(0)
    assert len(threads) == 3
    assert threading.current_thread().name not in threads


async def test_daemon_reports_a_missing_nvml_without_failing(tmp_path: Any) -> None:
    scenario = tmp_path / "no-nvml.yaml"
    scenario.write_text("name: no-nvml\ngpus: [{index: 0}]\nnvml: {missing: true}\n")
    clock = ManualClock()
    async with demo_daemon(str(scenario), clock) as daemon:
        for _ in range(3):
            clock.advance(5.0)
            await daemon.poll_once()
        text = await daemon.cache.get(openmetrics=False)
        assert text is not None
        body = text.body.decode()
        assert 'accel_exporter_collector_success{collector="nvml"} 0.0' in body
        assert 'accel_exporter_errors_total{collector="nvml",reason="LibraryNotFound"}' in body
        assert "accel_device_info" not in body.replace("# HELP accel_device_info", "").replace(
            "# TYPE accel_device_info", ""
        )


def test_every_metric_is_in_the_catalogue_once() -> None:
    from collections import Counter

    from exporter.catalogue import CATALOGUE

    twice = [name for name, count in Counter(spec.name for spec in CATALOGUE).items() if count > 1]
    assert twice == []


def test_a_counter_outside_the_catalogue_is_refused_at_ingest_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """One misspelled name from a source must not make every later render fail."""
    from exporter.accounting.ledger import Ledger
    from exporter.config.model import AccountingSettings
    from exporter.context.model import HostContext, HostIdentity, PriceQuote
    from exporter.context.owner.attribution import RuleAttributor
    from exporter.readings import CounterDelta, DeviceIdentity, DeviceReading, SourceReport

    identity = HostIdentity(provider="aws", instance_type="p4d.24xlarge", source="demo")
    context = HostContext(identity, PriceQuote(None, "none"), RuleAttributor(AttributionSettings()))
    counters = (
        CounterDelta("accel_nvidia_xid_errors_total", (("xid", "79"),), 1.0),
        CounterDelta("accel_nvidia_xid_error_total", (("xid", "79"),), 1.0),  # misspelled
        CounterDelta("accel_power_watts", (), 5.0),  # a gauge
        CounterDelta("accel_nvidia_xid_errors_total", (("code", "79"),), 1.0),  # no such label
    )
    reading = DeviceReading(DeviceIdentity("nvidia0", "GPU-0", "nvidia", "A100", "gpu"), up=True, counters=counters)
    ledger = Ledger(AccountingSettings())
    for now in (0.0, 5.0):
        ledger.ingest(SourceReport("nvml", (reading,), True, 0.0, now), context, now)
    families = {f.name: f for f in build_families(ledger.snapshot(5.0))}  # renders: nothing raises
    xid = [(s.labels["xid"], s.value) for s in families["accel_nvidia_xid_errors"].samples]
    assert xid == [("79", 2.0)]
    errors = {(s.labels["collector"], s.labels["reason"]): s.value for s in families["accel_exporter_errors"].samples}
    assert errors[("nvml", "unknown_metric")] == 6.0  # three refused increments, twice
    refusals = [r.message for r in caplog.records if "counter refused" in r.message]
    assert len(refusals) == 3  # each problem logged once
