"""Simulated hosts shared by test modules in different folders: a Daemon on a built-in scenario and
the real NvmlSource on a fake driver, each on a ManualClock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from exporter.clock import ManualClock
from exporter.config import Config
from exporter.context.provider import ContextProvider
from exporter.daemon import Daemon, Options
from exporter.readings import DeviceReading, SourceReport
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.scenario import load_scenario, parse_scenario
from exporter.sources.nvml import NvmlSource


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


class FakeNvmlHost:
    """The real NvmlSource on a FakeNvml, both on one ManualClock."""

    def __init__(self, scenario: dict[str, Any] | str) -> None:
        loaded = load_scenario(scenario) if isinstance(scenario, str) else parse_scenario(scenario, "test")
        self.clock = ManualClock()
        self.fake = FakeNvml(loaded, self.clock)
        module = self.fake.module()
        self.source = NvmlSource(lambda: module, self.clock, SimProcFs(self.fake))

    async def step(self, seconds: float) -> dict[str, DeviceReading]:
        self.clock.advance(seconds)
        report: SourceReport = await self.source.poll()
        self.last_report = report
        return {r.identity.device: r for r in report.devices}
