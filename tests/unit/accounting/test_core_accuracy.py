"""Busy-time accounting against the simulator's ground truth, at short and long poll intervals.

accel_busy_seconds_total must integrate the driver's sample buffer, not stretch a point reading:
a 200 ms burst every 2 s is 10 % busy whatever the poll interval. The simulated driver fills its
buffer from the pattern's exact integrals, so the only differences allowed are the first-contact
skip (the buffer's history before the first poll is not counted), the tail after the newest sample
(at most one sample period), and NVML's whole-percent sample values.
"""

from __future__ import annotations

from typing import Any

import pytest

from exporter.accounting.ledger import Ledger
from exporter.clock import ManualClock
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.scenario import Scenario, load_scenario, parse_scenario
from exporter.sources.nvml import SAMPLES_READ_SECONDS, NvmlSource

RUN_SECONDS = 30 * 60.0
BURSTY = {"burst": {"busy": "0.2s", "period": "2s"}}


async def integrate(scenario: Scenario, interval: float, phase: float) -> tuple[dict[str, float], float, float]:
    """Poll every `interval` s for RUN_SECONDS, first poll at `phase`; busy totals, first and last poll times."""
    clock = ManualClock()
    fake = FakeNvml(scenario, clock)
    source = NvmlSource(fake.module, clock, SimProcFs(fake))
    ledger = Ledger(AccountingSettings())
    context = HostContext(HostIdentity(), PriceQuote(8.0, "config"), RuleAttributor(AttributionSettings()))
    try:
        clock.advance(phase)
        first = clock.monotonic()
        while True:
            ledger.ingest(await source.poll(), context, clock.monotonic())
            if clock.monotonic() + interval > RUN_SECONDS + phase:
                break
            clock.advance(interval)
        last = clock.monotonic()
    finally:
        await source.stop()
    snapshot = ledger.snapshot(last)
    return {d.identity.device: d.busy_seconds_total for d in snapshot.devices}, first, last


def bursty_host(offset: float = 0.0) -> Scenario:
    pattern: dict[str, Any] = {"burst": {**BURSTY["burst"], "offset": offset}}
    return parse_scenario({"gpus": [{"index": 0, "utilization": pattern}]}, "bursty")


@pytest.mark.parametrize("interval", [5.0, 30.0])
@pytest.mark.parametrize("phase", [1.0, 0.37, 7.91])
async def test_bursty_load_busy_seconds_within_one_percent(interval: float, phase: float) -> None:
    scenario = bursty_host()
    busy, first, last = await integrate(scenario, interval, phase)
    truth = scenario.gpus[0].utilization.busy(first, last)
    assert truth == pytest.approx(0.1 * (last - first), rel=0.01)
    error = abs(busy["nvidia0"] - truth) / truth
    assert error < 0.01, (interval, phase, busy["nvidia0"], truth)
    # Tighter: what was not counted lies only in the first and last sample period.
    period = scenario.sample_period
    assert abs(busy["nvidia0"] - truth) <= 2 * period + 1e-9


async def test_one_second_polls_stay_exact_between_buffer_reads() -> None:
    # At a 1 s interval the buffer is read every few seconds (it costs milliseconds on a real
    # driver); the samples wait there, so nothing is lost, only counted a few seconds later.
    scenario = bursty_host()
    busy, first, last = await integrate(scenario, 1.0, 0.37)
    truth = scenario.gpus[0].utilization.busy(first, last)
    assert busy["nvidia0"] == pytest.approx(truth, rel=0.01)
    assert truth - busy["nvidia0"] <= 0.2 * SAMPLES_READ_SECONDS + 2 * scenario.sample_period


@pytest.mark.parametrize("offset", [0.0, 0.05, 1.3])
async def test_burst_phase_does_not_matter(offset: float) -> None:
    # Point sampling at 30 s aliases with a 2 s period; integration does not care where the burst sits.
    scenario = bursty_host(offset)
    busy, first, last = await integrate(scenario, 30.0, 1.0)
    truth = scenario.gpus[0].utilization.busy(first, last)
    assert busy["nvidia0"] == pytest.approx(truth, rel=0.01)


@pytest.mark.parametrize("interval", [5.0, 30.0])
async def test_every_pattern_of_the_idle_fleet(interval: float) -> None:
    scenario = load_scenario("p4d-idle-fleet")
    busy, first, last = await integrate(scenario, interval, 2.0)
    for gpu in scenario.gpus:
        name = f"nvidia{gpu.index}"
        truth = gpu.utilization.busy(first, last)
        if truth == 0:
            assert busy[name] == 0.0, name
        else:
            assert busy[name] == pytest.approx(truth, rel=0.01), name
