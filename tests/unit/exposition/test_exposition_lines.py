"""The cached-lines renderer against the reference (prometheus-client's encoders over the same families).

Every built-in scenario, both formats, a first render and a later one that reuses kept lines: the
parsed samples must be identical, and `promtool check metrics` must accept what we serve.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.accounting.ledger import Ledger
from exporter.accounting.snapshot import Snapshot
from exporter.config import Config
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.provider import ContextProvider
from exporter.daemon import Daemon, Options
from exporter.exposition.collector import SnapshotCollector
from exporter.exposition.lines import LineKeeper
from exporter.exposition.render import Renderer
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.sim.scenario import builtin_scenarios

Parsed = tuple[
    set[tuple[str, str, str]],  # families: name, type, help
    list[tuple[str, tuple[tuple[str, str], ...], float | str]],  # samples, sorted
]


def reference(snapshot: Snapshot, openmetrics: bool) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    if openmetrics:
        return bytes(generate_openmetrics(registry)).decode()  # type: ignore[no-untyped-call]
    return generate_latest(registry).decode()


def parsed(body: str, openmetrics: bool) -> Parsed:
    families = list(parse_openmetrics(body) if openmetrics else parse_text(body))  # type: ignore[no-untyped-call]
    heads = {(f.name, f.type, f.documentation) for f in families}
    samples = sorted(
        (s.name, tuple(sorted(s.labels.items())), "NaN" if math.isnan(s.value) else s.value)
        for f in families
        for s in f.samples
    )
    return heads, samples  # type: ignore[return-value]


def assert_same(snapshot: Snapshot, renderer: Renderer, what: str) -> None:
    for openmetrics in (False, True):
        ours = renderer.plain(snapshot, openmetrics).body.decode()
        ref = reference(snapshot, openmetrics)
        assert parsed(ours, openmetrics) == parsed(ref, openmetrics), f"{what}, openmetrics={openmetrics}"
        assert len(parsed(ours, openmetrics)[1]) > 0
        if shutil.which("promtool") and not openmetrics:
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=ours, capture_output=True, text=True, timeout=60, check=False
            )
            assert check.returncode == 0 and not check.stdout.strip(), f"{what}: {check.stdout}{check.stderr}"


async def scenario_snapshots(name: str, count: int) -> list[Snapshot]:
    """`count` snapshots of a built-in scenario, from the real sources on the simulated hardware."""
    daemon = Daemon(Options(demo=name, interval=1.0), Config())
    daemon._build_sources()
    daemon.provider = ContextProvider(Config(), daemon.clock, daemon.environment)
    await daemon.provider.start()
    out: list[Snapshot] = []
    try:
        for source in daemon.sources:
            await source.start()
        deadline = time.monotonic() + 60
        while len(out) < count:
            await daemon.poll_once()
            snapshot = daemon.ledger.snapshot(daemon.clock.monotonic())
            if snapshot.devices:  # a Neuron scenario has devices once the first report is read
                out.append(snapshot)
            assert time.monotonic() < deadline, f"{name}: no devices after 60 s"
            await asyncio.sleep(0.2)
    finally:
        for source in daemon.sources:
            await source.stop()
        daemon.environment.close()
    return out


@pytest.mark.parametrize("scenario", builtin_scenarios())
async def test_every_scenario_renders_the_same_samples_as_prometheus_client(scenario: str) -> None:
    renderer = Renderer(process_metrics=False)
    first, second, third = await scenario_snapshots(scenario, 3)
    assert_same(first, renderer, f"{scenario}: first render")
    # Later renders reuse the kept prefixes and lines: a value that changed must not be served stale.
    assert_same(second, renderer, f"{scenario}: second render")
    assert_same(third, renderer, f"{scenario}: third render")


HOSTILE = ['quote " back \\ slash', "new\nline", "tab\tand ünïcødé ✓", "j\udce9r\udcf4me", "", "}{,=", "# EOF"]


def hostile_snapshots() -> list[Snapshot]:
    settings = AttributionSettings()
    identity = HostIdentity(provider="aws", instance_type='p4d "24" \\ xlarge', tags=(("Team", 'a"b\\c\nd'),))
    context = HostContext(identity, PriceQuote(32.77, "config"), RuleAttributor(settings, identity.tags))
    ledger = Ledger(AccountingSettings(), max_label_values=1000)
    device = DeviceIdentity("nvidia0", 'GPU-"\\', "nvidia", "NVIDIA\nA100", "gpu", "", "550\udc80")
    processes = tuple(ProcessReading(1000 + i, 2**30, text, text) for i, text in enumerate(HOSTILE))
    out = []
    for now, utilization in ((0.0, 0.2), (15.0, 0.2), (30.0, 0.7)):
        reading = DeviceReading(device, True, utilization * 15, 15.0, utilization, 2**30, 2**35, processes=processes)
        ledger.ingest(SourceReport("nvml", (reading,), True, 0.01, 1.8e9 + now), context, now)
        out.append(ledger.snapshot(now))
    return out


def test_hostile_label_values_render_the_same_as_prometheus_client() -> None:
    renderer = Renderer(process_metrics=False)
    for i, snapshot in enumerate(hostile_snapshots()):
        assert_same(snapshot, renderer, f"hostile snapshot {i}")


def test_unchanged_series_reuse_their_line_and_changed_ones_are_formatted_again() -> None:
    keeper = LineKeeper()
    _, second, third = hostile_snapshots()
    a = dict(keeper.lines(second).families)
    b = dict(keeper.lines(second).families)
    assert all(x is y for name in a for x, y in zip(a[name], b[name], strict=True))  # nothing formatted again
    c = dict(keeper.lines(third).families)
    assert a["accel_memory_total_bytes"][0] is c["accel_memory_total_bytes"][0]  # same value: same string
    assert a["accel_utilization_ratio"] != c["accel_utilization_ratio"]
    assert c["accel_utilization_ratio"] == ('accel_utilization_ratio{device="nvidia0"} 0.7\n',)


def test_vanished_series_are_forgotten() -> None:
    keeper = LineKeeper()
    first = hostile_snapshots()[0]
    keeper.lines(first)
    kept: Any = keeper._kept
    assert any(name == "accel_process_info" for name, _ in kept)
    ledger = Ledger(AccountingSettings())
    device = DeviceIdentity("nvidia1", "GPU-1", "nvidia", "L4", "gpu")
    context = HostContext(HostIdentity(), PriceQuote(None, "none"), RuleAttributor(AttributionSettings()))
    ledger.ingest(SourceReport("nvml", (DeviceReading(device, True),), True, 0.01, 1.8e9), context, 0.0)
    keeper.lines(ledger.snapshot(0.0))
    assert not any(name == "accel_process_info" for name, _ in keeper._kept)
    assert all(values[:1] != ("nvidia0",) for _, values in keeper._kept)
    assert keeper._blocks == {}  # nvidia0's process block went with it


def test_a_device_whose_processes_are_unchanged_reuses_its_process_lines_and_any_change_shows() -> None:
    # Neuron-shaped: the same runtimes listed on several cores. Each later render must be exactly
    # what a keeper with nothing kept renders, and match the reference.
    ledger = Ledger(AccountingSettings())
    context = HostContext(HostIdentity(), PriceQuote(21.5, "config"), RuleAttributor(AttributionSettings()))
    cores = [DeviceIdentity(f"neuroncore{n}", f"nc-{n}", "aws", "trainium", "neuroncore") for n in range(3)]
    alice, bob = ProcessReading(11, 2**30, "alice", "train.py", 100.0), ProcessReading(12, 2**29, "bob", "serve.py")
    polls = [
        (alice, bob),
        (alice, bob),  # unchanged: blocks reused
        (alice, ProcessReading(12, 2**28, "bob", "serve.py")),  # bob's memory changed
        (alice,),  # bob left
        (alice, ProcessReading(13, None, "carol", "nb", 5.0)),  # carol came
    ]
    keeper, renderer = LineKeeper(), Renderer(process_metrics=False)
    previous: dict[str, tuple[str, ...]] = {}
    for i, processes in enumerate(polls):
        readings = tuple(DeviceReading(core, True, 0.5, 1.0, 0.5, processes=processes) for core in cores)
        ledger.ingest(SourceReport("neuron", readings, True, 0.01, 1.8e9 + i), context, float(i))
        snapshot = ledger.snapshot(float(i))
        lines = keeper.lines(snapshot)
        for openmetrics in (False, True):
            assert lines.body(openmetrics=openmetrics) == LineKeeper().lines(snapshot).body(openmetrics=openmetrics)
        assert_same(snapshot, renderer, f"poll {i}")
        info = dict(lines.families)["accel_process_info"]
        assert len(info) == 3 * len(processes)
        if i == 1:  # the very same line objects: nothing was formatted or even looked up again
            assert all(a is b for a, b in zip(previous["accel_process_info"], info, strict=True))
        previous = dict(lines.families)
