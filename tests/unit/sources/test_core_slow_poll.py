"""A slow poll is not a lost one, and a Neuron host without an NVIDIA driver turns NVML off (daemon)."""

from __future__ import annotations

import asyncio

import pynvml

from exporter.clock import SystemClock
from exporter.config import Config
from exporter.daemon import STALLED_POLLS, Daemon, Options
from exporter.readings import DeviceIdentity, DeviceReading, SourceReport
from exporter.sources.nvml import NvmlSource
from exporter.sources.procfs import ProcFs

GPU = DeviceIdentity("nvidia0", "GPU-x", "nvidia", "NVIDIA L4", "gpu")


class SlowSource:
    """Answers after `delay` seconds with 0.7 s of busy time."""

    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.polls = 0

    async def start(self) -> None:
        pass

    async def poll(self) -> SourceReport:
        self.polls += 1
        await asyncio.sleep(self.delay)
        reading = DeviceReading(GPU, up=True, busy_seconds=0.7, covered_seconds=1.0, utilization=0.7)
        return SourceReport(self.name, (reading,), True, self.delay, 0.0)

    async def stop(self) -> None:
        pass


async def test_a_late_report_is_taken_on_the_next_cycle_not_thrown_away() -> None:
    daemon = Daemon(Options(interval=1.0), Config(), SystemClock())
    source = SlowSource(delay=1.4)
    first = await daemon._poll_source(source)  # times out after 1 s
    assert first.stalled and not first.success and dict(first.errors) == {"timeout": 1}
    second = await daemon._poll_source(source)  # the same poll finishes 0.4 s later
    assert second.success and second.devices[0].busy_seconds == 0.7
    assert source.polls == 1  # no second poll was started while the first was running


async def test_a_stuck_source_shows_down_after_a_few_cycles() -> None:
    daemon = Daemon(Options(interval=1.0), Config(), SystemClock())
    source = SlowSource(delay=60.0)
    reports = [await daemon._poll_source(source) for _ in range(STALLED_POLLS + 1)]
    assert [r.stalled for r in reports] == [True] * (STALLED_POLLS - 1) + [False, False]
    assert all(not r.complete for r in reports)
    assert source.polls == 1
    for task in daemon._pending.values():
        task.cancel()


def _no_driver() -> object:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


class FakeNeuron(SlowSource):
    name = "neuron"


async def test_nvml_turns_itself_off_on_a_neuron_host_without_a_driver() -> None:
    for forced, kept in (({}, False), ({"nvml": True}, True)):
        daemon = Daemon(Options(collectors=forced), Config(), SystemClock())
        nvml = NvmlSource(_no_driver, daemon.clock, ProcFs())
        daemon.sources = [nvml, FakeNeuron(0.0)]
        await nvml.start()
        assert nvml.no_driver
        daemon._drop_absent_sources()
        assert (nvml in daemon.sources) is kept
        for task in daemon._tasks:
            await task
        if kept:
            await nvml.stop()


async def test_nvml_stays_on_without_a_neuron_source_so_a_missing_driver_is_alerted() -> None:
    daemon = Daemon(Options(), Config(), SystemClock())
    nvml = NvmlSource(_no_driver, daemon.clock, ProcFs())
    daemon.sources = [nvml]
    await nvml.start()
    daemon._drop_absent_sources()
    assert daemon.sources == [nvml]
    await nvml.stop()
