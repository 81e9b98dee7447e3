"""The NVML source against the simulated driver (FakeNvml) on a ManualClock: identity, MIG, memory,
power, energy, processes, the worker thread, and faults (lost GPU, missing NVML, errors, unsupported)."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from exporter.clock import ManualClock
from exporter.readings import DeviceReading, SourceReport
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.scenario import Scenario, load_scenario, parse_scenario
from exporter.sources.nvml import ENERGY_READ_SECONDS, SAMPLES_READ_SECONDS, NvmlSource

GiB = 2**30
INTERVAL = 5.0


class SimHost:
    """A FakeNvml and the real NvmlSource on one ManualClock; `module` may be patched before polling."""

    def __init__(self, scenario: Scenario, **source_kwargs: Any) -> None:
        self.clock = ManualClock()
        self.fake = FakeNvml(scenario, self.clock)
        self.module = self.fake.module()
        self.loads = 0
        self.source = NvmlSource(self._load, self.clock, SimProcFs(self.fake), **source_kwargs)

    def _load(self) -> Any:
        self.loads += 1
        return self.module

    def wrap(self, name: str, around: Callable[..., Any]) -> None:
        """Replace module call `name` with `around(original, *args, **kwargs)`."""
        original = getattr(self.module, name)
        setattr(self.module, name, lambda *a, **k: around(original, *a, **k))

    async def step(self, seconds: float = INTERVAL) -> SourceReport:
        self.clock.advance(seconds)
        return await self.source.poll()


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Callable[..., SimHost]]:
    hosts: list[SimHost] = []

    def make(scenario: str | dict[str, Any], **kwargs: Any) -> SimHost:
        loaded = load_scenario(scenario) if isinstance(scenario, str) else parse_scenario(scenario, "test")
        host = SimHost(loaded, **kwargs)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        await host.source.stop()


def by_name(report: SourceReport) -> dict[str, DeviceReading]:
    return {r.identity.device: r for r in report.devices}


def errors(report: SourceReport) -> dict[str, int]:
    return dict(report.errors)


# --- identity --------------------------------------------------------------------------------------


async def test_every_gpu_with_identity(sim: Callable[..., SimHost]) -> None:
    host = sim("p4d-idle-fleet")
    await host.source.start()
    report = await host.step(1.0)
    assert report.success and report.complete
    assert report.collector == "nvml"
    devices = by_name(report)
    assert list(devices) == [f"nvidia{i}" for i in range(8)]
    uuids = set()
    for reading in devices.values():
        i = reading.identity
        assert reading.up
        assert (i.vendor, i.kind, i.parent, i.model) == ("nvidia", "gpu", "", "NVIDIA A100-SXM4-40GB")
        assert i.driver_version == "550.54.15"
        assert i.uuid.startswith("GPU-")
        assert i.physical and i.price_units == 1.0
        uuids.add(i.uuid)
    assert len(uuids) == 8


async def test_device_name_comes_from_the_minor_number(sim: Callable[..., SimHost]) -> None:
    # Enumeration order is not the minor number: a container that sees GPUs 3 and 6 only.
    host = sim({"gpus": [{"index": 6}, {"index": 3}]})
    report = await host.step(1.0)
    assert sorted(by_name(report)) == ["nvidia3", "nvidia6"]


async def test_mig_instances_and_price_units(sim: Callable[..., SimHost]) -> None:
    host = sim("a100-mig")
    first = await host.step(1.0)
    report = await host.step()
    devices = by_name(report)
    assert list(devices)[:4] == ["nvidia0", "nvidia0-mig1", "nvidia0-mig5", "nvidia0-mig13"]
    assert len(devices) == 8 + 3 + 1 + 3  # MIG instances on GPUs 0, 2 and 5
    parent = devices["nvidia0"].identity
    assert parent.kind == "gpu" and parent.physical
    assert parent.price_units == pytest.approx(1 / 7)  # the unallocated 1g slice
    for name, slices, memory in (("nvidia0-mig1", 3, 40), ("nvidia0-mig5", 2, 20), ("nvidia0-mig13", 1, 10)):
        reading = devices[name]
        i = reading.identity
        assert (i.kind, i.parent, i.vendor, i.physical) == ("mig", "nvidia0", "nvidia", False)
        assert i.uuid.startswith("MIG-")
        assert i.price_units == pytest.approx(slices / 7)
        assert reading.memory_total_bytes == memory * GiB
        # NVML has no MIG utilization: unknown, never 0.
        assert reading.utilization is None
        assert reading.busy_seconds is None
        assert reading.power_watts is None and reading.energy_joules is None
    assert sum(d.identity.price_units for n, d in devices.items() if n.startswith("nvidia0")) == pytest.approx(1.0)
    # The parent has no activity either, but power and energy are device-wide.
    assert devices["nvidia0"].utilization is None
    assert devices["nvidia0"].power_watts is not None
    assert by_name(first)["nvidia0"].energy_joules is not None  # read every ENERGY_READ_SECONDS
    # Processes sit on the MIG instance they run in, not on the parent.
    assert [p.pid for p in devices["nvidia0-mig1"].processes] == [6001]
    assert devices["nvidia0-mig1"].memory_used_bytes == 30 * GiB
    assert [p.pid for p in devices["nvidia0-mig5"].processes] == [6002]
    assert devices["nvidia0-mig13"].processes == ()
    assert devices["nvidia0"].processes == ()
    # Whole GPUs next to it report utilization normally.
    assert devices["nvidia1"].utilization == pytest.approx(0.8)


# --- activity, memory, power, energy -----------------------------------------------------------------


async def test_utilization_integrated_from_the_sample_buffer(sim: Callable[..., SimHost]) -> None:
    host = sim("p4d-idle-fleet")
    first = by_name(await host.step(1.0))
    assert first["nvidia3"].busy_seconds == 0.0  # first contact: the buffer's history is skipped
    devices = by_name(await host.step(INTERVAL))
    gpu3 = devices["nvidia3"]
    assert gpu3.covered_seconds == pytest.approx(INTERVAL, abs=0.2)
    assert gpu3.utilization == pytest.approx(0.55, abs=0.005)
    assert gpu3.busy_seconds == pytest.approx(0.55 * gpu3.covered_seconds, rel=0.01)
    assert devices["nvidia0"].utilization == 0.0
    assert devices["nvidia0"].busy_seconds == 0.0


async def test_first_poll_shows_the_newest_sample_not_the_history(sim: Callable[..., SimHost]) -> None:
    # Busy for 3 s before the exporter started, idle since: the gauge says idle from the start,
    # and the history before the first poll is not counted as busy time.
    schedule = {"schedule": {"steps": [{"at": "0s", "value": 1.0}, {"at": "3s", "value": 0.0}]}}
    host = sim(fleet({"index": 0, "utilization": schedule}, {"index": 1, "utilization": 0.5}))
    first = by_name(await host.step(4.0))
    assert first["nvidia0"].utilization == 0.0 and first["nvidia0"].busy_seconds == 0.0
    assert first["nvidia1"].utilization == pytest.approx(0.5, abs=0.01)


async def test_memory_uses_v2(sim: Callable[..., SimHost]) -> None:
    host = sim("p4d-idle-fleet")
    versions: list[object] = []

    def record(original: Callable[..., Any], handle: Any, version: object = None) -> Any:
        versions.append(version)
        return original(handle, version=version) if version is not None else original(handle)

    host.wrap("nvmlDeviceGetMemoryInfo", record)
    devices = by_name(await host.step(1.0))
    assert versions and all(v == host.module.nvmlMemory_v2 for v in versions)
    assert devices["nvidia2"].memory_used_bytes == 30 * GiB
    assert devices["nvidia2"].memory_total_bytes == 40 * GiB
    assert devices["nvidia0"].memory_used_bytes == 0


async def test_memory_falls_back_to_v1_when_v2_is_unsupported(sim: Callable[..., SimHost]) -> None:
    host = sim(
        {
            "gpus": [
                {
                    "index": 0,
                    "memory_total": "16GiB",
                    "faults": [{"type": "unsupported", "call": "nvmlDeviceGetMemoryInfo_v2"}],
                }
            ],
            "processes": [{"pid": 77, "device": "0", "memory": "3GiB"}],
        }
    )
    for _ in range(3):
        reading = by_name(await host.step())["nvidia0"]
        assert reading.memory_total_bytes == 16 * GiB
        assert reading.memory_used_bytes == 3 * GiB


async def test_power_in_watts_and_energy_in_joules(sim: Callable[..., SimHost]) -> None:
    host = sim({"gpus": [{"index": 0, "utilization": 0.5, "power": {"idle": 60, "max": 300}}]})
    await host.step(1.0)
    report = await host.step(99.0)
    reading = by_name(report)["nvidia0"]
    assert reading.power_watts == pytest.approx(60 + 240 * 0.5)  # NVML says 180000 mW
    assert reading.energy_joules == pytest.approx((60 + 240 * 0.5) * 100.0, abs=0.001)  # mJ since load


# --- processes -----------------------------------------------------------------------------------


async def test_processes_with_proc_facts(sim: Callable[..., SimHost]) -> None:
    host = sim("p4d-idle-fleet")
    start_wall = host.clock.time()
    devices = by_name(await host.step(1.0))
    (proc,) = devices["nvidia2"].processes
    assert proc.pid == 41234
    assert proc.used_memory_bytes == 30 * GiB
    assert proc.user == "alice"
    assert proc.command == "python train_llm.py --resume"
    assert proc.start_time_seconds == pytest.approx(start_wall - 1814400)
    assert proc.cgroup == "0::/system.slice/llm-finetune.service"
    assert devices["nvidia0"].processes == ()
    assert {d: len(r.processes) for d, r in devices.items()} == {f"nvidia{i}": (0 if i < 2 else 1) for i in range(8)}


async def test_a_process_on_several_gpus_is_looked_up_once_per_poll(sim: Callable[..., SimHost]) -> None:
    both = [{"pid": 500, "device": str(i), "memory": "1GiB", "user": "bob"} for i in (0, 1)]
    host = sim(fleet({"index": 0}, {"index": 1}, processes=both))
    proc_fs = host.source._proc
    looked_up: list[int] = []
    original = proc_fs.facts
    proc_fs.facts = lambda pid: looked_up.append(pid) or original(pid)  # type: ignore[method-assign]
    for polls in (1, 2):
        devices = by_name(await host.step())
        assert [p.user for d in ("nvidia0", "nvidia1") for p in devices[d].processes] == ["bob", "bob"]
        assert looked_up == [500] * polls


async def test_process_churn(sim: Callable[..., SimHost]) -> None:
    # g6-inference: pid 4000 on GPU 3 every 20 s, living 8 s; the next one is pid 4001.
    host = sim("g6-inference")

    def pids_on_gpu3(report: SourceReport) -> list[int]:
        return [p.pid for p in by_name(report)["nvidia3"].processes]

    assert pids_on_gpu3(await host.step(1.0)) == [3104, 4000]
    memory_with_job = by_name(await host.step(1.0))["nvidia3"].memory_used_bytes
    assert pids_on_gpu3(await host.step(8.0)) == [3104]  # t=10: the job exited
    memory_without_job = by_name(await host.step(1.0))["nvidia3"].memory_used_bytes
    assert memory_with_job is not None and memory_without_job is not None
    assert memory_with_job - memory_without_job == 2 * GiB
    report = await host.step(11.0)  # t=21: a new job with a new pid
    assert pids_on_gpu3(report) == [3104, 4001]
    job = by_name(report)["nvidia3"].processes[1]
    assert job.user == "eve" and job.command == "python reindex.py"
    assert job.start_time_seconds == pytest.approx(host.clock.time() - 2.0)


async def test_process_listed_by_nvml_but_gone_from_proc(sim: Callable[..., SimHost]) -> None:
    # A container without hostPID: NVML lists a pid /proc does not have.
    host = sim({"gpus": [{"index": 0}], "processes": [{"pid": 5, "device": "0", "memory": "1GiB"}]})
    host.wrap(
        "nvmlDeviceGetComputeRunningProcesses_v3",
        lambda original, h: [*original(h), type("P", (), {"pid": 999, "usedGpuMemory": None})()],
    )
    reading = by_name(await host.step(1.0))["nvidia0"]
    ghost = next(p for p in reading.processes if p.pid == 999)
    assert ghost.used_memory_bytes is None
    assert ghost.user == "unknown"


# --- the worker thread -----------------------------------------------------------------------------


async def test_nvml_calls_run_on_the_nvml_worker_thread(sim: Callable[..., SimHost]) -> None:
    host = sim("p4d-idle-fleet")
    threads: set[str] = set()

    def record(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    for name in ("nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetSamples"):
        host.wrap(name, record)
    await host.source.start()
    for _ in range(3):
        await host.step()
    assert threads
    assert all(name.startswith("nvml") for name in threads), threads
    assert len(threads) == 1  # one dedicated worker, not a pool
    assert threading.current_thread().name not in threads


# --- faults ---------------------------------------------------------------------------------------


def fleet(*gpus: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"gpus": list(gpus), **extra}


async def test_gpu_lost_mid_run_and_back(sim: Callable[..., SimHost], caplog: pytest.LogCaptureFixture) -> None:
    host = sim(
        fleet(
            {"index": 0, "utilization": 0.5},
            {"index": 1, "utilization": 0.5, "faults": [{"type": "lost", "at": "60s", "until": "120s"}]},
            {"index": 2, "utilization": 0.5},
        )
    )
    timeline: list[tuple[float, dict[str, bool], SourceReport]] = []
    while host.clock.monotonic() < 180:
        report = await host.step()
        timeline.append((host.fake.now(), {d: r.up for d, r in by_name(report).items()}, report))
    for t, up, report in timeline:
        lost = 60 <= t < 120
        assert up == {"nvidia0": True, "nvidia1": not lost, "nvidia2": True}, t
        assert report.success is (not lost)
        if lost:
            assert errors(report).get("GpuIsLost") == 1
            reading = by_name(report)["nvidia1"]
            assert reading.identity.uuid  # identity kept while lost
            assert reading.utilization is None and reading.busy_seconds is None
        else:
            assert "GpuIsLost" not in errors(report)
    lost_logs = [r for r in caplog.records if "is lost" in r.getMessage()]
    again_logs = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(lost_logs) == 1 and len(again_logs) == 1  # logged on the transitions only
    # After recovery the device integrates again.
    assert timeline[-1][2].devices[1].utilization == pytest.approx(0.5, abs=0.01)


async def test_gpu_lost_before_start_does_not_hide_the_others(sim: Callable[..., SimHost]) -> None:
    host = sim(fleet({"index": 0, "utilization": 0.5}, {"index": 1, "faults": [{"type": "lost"}]}, {"index": 2}))
    for _ in range(3):
        report = await host.step()
        devices = by_name(report)
        assert list(devices) == ["nvidia0", "nvidia1", "nvidia2"]
        assert [r.up for r in devices.values()] == [True, False, True]
        assert devices["nvidia1"].identity.kind == "gpu"
        assert errors(report) == {"GpuIsLost": 1}
    assert devices["nvidia0"].utilization == pytest.approx(0.5)


async def test_nvml_missing_backs_off_and_logs_once(
    sim: Callable[..., SimHost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = sim(fleet({"index": 0}, nvml={"missing": True}), retry_initial=5.0, retry_max=60.0)
    attempts: list[float] = []

    def record(original: Callable[..., Any]) -> Any:
        attempts.append(host.clock.monotonic())
        return original()

    host.wrap("nvmlInit", record)
    await host.source.start()  # must not raise
    reports = []
    while host.clock.monotonic() < 400:
        reports.append(await host.step(1.0))
    assert all(not r.success and not r.complete and r.devices == () for r in reports)
    assert attempts[:7] == [0.0, 5.0, 15.0, 35.0, 75.0, 135.0, 195.0]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0]  # doubling ...
    assert set(gaps[4:]) == {60.0}  # ... up to the cap
    failures = sum(errors(r).get("LibraryNotFound", 0) for r in reports)
    assert failures == len(attempts)  # start()'s failed attempt is reported with the first poll
    unavailable = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(unavailable) == 1
    assert "libnvidia-ml.so.1" in unavailable[0].getMessage()  # the hint says how to fix it
    assert all(r.message for r in reports)


async def test_nvml_init_error_then_recovery(sim: Callable[..., SimHost]) -> None:
    # The kernel module is not loaded for the first 30 s (e.g. a driver upgrade in progress).
    host = sim(
        fleet(
            {"index": 0, "utilization": 0.3},
            nvml={"faults": [{"type": "init_error", "error": "DriverNotLoaded", "at": "0s", "until": "30s"}]},
        ),
        retry_initial=2.0,
        retry_max=8.0,
    )
    report = await host.step(1.0)
    assert not report.success and errors(report) == {"DriverNotLoaded": 1}
    while host.clock.monotonic() < 40:
        report = await host.step(2.0)
    assert report.success
    reading = by_name(report)["nvidia0"]
    assert reading.up and reading.utilization == pytest.approx(0.3, abs=0.01)


async def test_intermittent_errors_are_counted_and_the_device_stays_up(sim: Callable[..., SimHost]) -> None:
    host = sim(
        fleet(
            {
                "index": 0,
                "utilization": 0.2,
                "faults": [{"type": "error", "call": "nvmlDeviceGetPowerUsage", "every": 3, "error": "NoData"}],
            }
        )
    )
    calls = 0

    def count(original: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args)

    host.wrap("nvmlDeviceGetPowerUsage", count)
    total = 0
    powers = []
    for _ in range(30):
        report = await host.step()
        reading = by_name(report)["nvidia0"]
        assert reading.up and report.success
        assert reading.memory_total_bytes is not None  # other fields keep reporting
        total += errors(report).get("NoData", 0)
        powers.append(reading.power_watts)
    assert calls == 30  # an error is not cached as "unsupported": it is retried every poll
    assert total == 10
    assert powers.count(None) == 10  # absent on the failed poll, not 0


async def test_unsupported_energy_is_absent_and_not_retried(sim: Callable[..., SimHost]) -> None:
    host = sim(
        fleet(
            {"index": 0, "faults": [{"type": "unsupported", "call": "nvmlDeviceGetTotalEnergyConsumption"}]},
            {"index": 1},
        )
    )
    calls: list[Any] = []

    def count(original: Callable[..., Any], handle: Any) -> Any:
        calls.append(handle)
        return original(handle)

    host.wrap("nvmlDeviceGetTotalEnergyConsumption", count)
    for _ in range(5):
        report = await host.step(ENERGY_READ_SECONDS)
        devices = by_name(report)
        assert devices["nvidia0"].energy_joules is None
        assert devices["nvidia1"].energy_joules is not None
        assert devices["nvidia0"].power_watts is not None
        assert report.success and "NotSupported" not in errors(report)
    # nvidia0 asked once, nvidia1 every poll.
    assert len(calls) == 1 + 5


async def test_sample_buffer_unsupported_falls_back_to_point_readings(sim: Callable[..., SimHost]) -> None:
    host = sim(
        fleet({"index": 0, "utilization": 0.4, "faults": [{"type": "unsupported", "call": "nvmlDeviceGetSamples"}]})
    )
    await host.step(1.0)
    reading = by_name(await host.step(10.0))["nvidia0"]
    assert reading.utilization == pytest.approx(0.4)
    assert reading.busy_seconds == pytest.approx(4.0)
    assert reading.covered_seconds == pytest.approx(10.0)


async def test_overflowing_sample_buffer_is_counted(sim: Callable[..., SimHost]) -> None:
    host = sim(fleet({"index": 0, "utilization": 0.5}, nvml={"buffer_samples": 6, "sample_period": "1s"}))
    await host.step(1.0)
    report = await host.step(30.0)  # 30 samples produced, 6 kept
    assert errors(report).get("samples_lost") == 1
    reading = by_name(report)["nvidia0"]
    assert reading.covered_seconds == pytest.approx(30.0)  # the gap is charged, not dropped
    assert reading.busy_seconds == pytest.approx(15.0)


def call_counter(host: SimHost, name: str) -> list[float]:
    """Record the simulated time of every call of `name`."""
    times: list[float] = []

    def record(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        times.append(host.clock.monotonic())
        return original(*args, **kwargs)

    host.wrap(name, record)
    return times


async def test_costly_reads_are_spaced_at_short_intervals(sim: Callable[..., SimHost]) -> None:
    # The energy counter and the sample buffer cost milliseconds per call on a real driver; power,
    # memory and processes cost microseconds and are read every poll.
    host = sim(fleet({"index": 0, "utilization": 0.5}))
    host.clock.advance(60.0)  # a driver that has been up a while: its sample buffer is full
    energy = call_counter(host, "nvmlDeviceGetTotalEnergyConsumption")
    samples = call_counter(host, "nvmlDeviceGetSamples")
    power = call_counter(host, "nvmlDeviceGetPowerUsage")
    readings = [by_name(await host.step(1.0))["nvidia0"] for _ in range(60)]
    assert len(power) == 60
    assert all(r.power_watts is not None for r in readings)
    assert 60 / ENERGY_READ_SECONDS <= len(energy) <= 60 / (0.75 * ENERGY_READ_SECONDS) + 1
    assert 60 / SAMPLES_READ_SECONDS <= len(samples) <= 60 / (0.75 * SAMPLES_READ_SECONDS) + 1
    assert max(b - a for a, b in itertools.pairwise(samples)) <= SAMPLES_READ_SECONDS
    # Polls between buffer reads add nothing and keep the last utilization; the reads catch up.
    assert sum(r.busy_seconds or 0.0 for r in readings[1:]) == pytest.approx(0.5 * (samples[-1] - samples[0]), rel=0.01)
    assert all(r.utilization == pytest.approx(0.5, abs=0.01) for r in readings[1:])


async def test_every_poll_reads_at_the_default_interval(sim: Callable[..., SimHost]) -> None:
    host = sim(fleet({"index": 0, "utilization": 0.5}))
    samples = call_counter(host, "nvmlDeviceGetSamples")
    for _ in range(10):
        await host.step(INTERVAL - 0.01)  # a little early, as a real timer can be
    assert len(samples) == 10


async def test_a_short_sample_buffer_is_read_before_it_overflows(sim: Callable[..., SimHost]) -> None:
    # 6 samples a second apart: the buffer holds 5 s, so it is read every 2.5 s at most.
    host = sim(fleet({"index": 0, "utilization": 0.5}, nvml={"buffer_samples": 6, "sample_period": "1s"}))
    samples = call_counter(host, "nvmlDeviceGetSamples")
    await host.step(10.0)  # fills the buffer, so its span is known from the first read
    reports = [await host.step(1.0) for _ in range(30)]
    assert max(b - a for a, b in itertools.pairwise(samples)) <= 2.5
    assert all("samples_lost" not in errors(r) for r in reports)
    busy = sum(by_name(r)["nvidia0"].busy_seconds or 0.0 for r in reports)
    assert busy == pytest.approx(0.5 * (samples[-1] - samples[0]), rel=0.05)


async def test_an_empty_sample_list_is_no_new_samples(sim: Callable[..., SimHost]) -> None:
    # Some drivers answer an empty list where others raise NVML_ERROR_NOT_FOUND.
    host = sim(fleet({"index": 0, "utilization": 0.5}))
    empty = {"on": True}
    host.wrap("nvmlDeviceGetSamples", lambda original, *a: (1, []) if empty["on"] else original(*a))
    first = by_name(await host.step(10.0))["nvidia0"]  # the very first read
    assert first.up and first.busy_seconds == 0.0
    empty["on"] = False
    await host.step()
    empty["on"] = True
    for _ in range(2):  # later reads
        reading = by_name(await host.step())["nvidia0"]
        assert reading.up and reading.busy_seconds == 0.0
    empty["on"] = False
    reading = by_name(await host.step())["nvidia0"]
    assert reading.busy_seconds == pytest.approx(0.5 * 3 * INTERVAL, rel=0.01)  # nothing was lost


async def test_an_unforeseen_failure_on_one_gpu_does_not_hide_the_others(
    sim: Callable[..., SimHost], caplog: pytest.LogCaptureFixture
) -> None:
    host = sim(fleet({"index": 0, "utilization": 0.5}, {"index": 1, "utilization": 0.5}))
    await host.step()
    broken = host.source._devices[1].handle
    failing = {"on": True}

    def power(original: Callable[..., Any], handle: Any) -> Any:
        if handle is broken and failing["on"]:
            raise ValueError("a binding bug")
        return original(handle)

    host.wrap("nvmlDeviceGetPowerUsage", power)
    for _ in range(3):
        report = await host.step()
        devices = by_name(report)
        assert devices["nvidia0"].up and devices["nvidia0"].busy_seconds is not None
        assert not devices["nvidia1"].up
        assert errors(report) == {"unexpected_ValueError": 1}
    assert sum("unexpected answer from NVML" in r.message for r in caplog.records) == 1  # logged once
    failing["on"] = False
    devices = by_name(await host.step())
    assert devices["nvidia1"].up
    # Its samples waited in the buffer: the busy time of the failing polls is counted now.
    assert devices["nvidia1"].busy_seconds == pytest.approx(0.5 * 4 * INTERVAL, rel=0.01)


async def test_xid_event_becomes_a_counter(sim: Callable[..., SimHost]) -> None:
    host = sim(fleet({"index": 0}, {"index": 1, "faults": [{"type": "xid", "xid": 79, "at": "12s"}]}))
    assert all(r.counters == () for r in (await host.step()).devices)
    report = await host.step(10.0)
    devices = by_name(report)
    (delta,) = devices["nvidia1"].counters
    assert (delta.metric, delta.labels, delta.value) == ("accel_nvidia_xid_errors_total", (("xid", "79"),), 1.0)
    assert devices["nvidia0"].counters == ()
    assert all(r.counters == () for r in (await host.step()).devices)  # delivered once


def test_fault_yaml_round_trip(tmp_path: Path) -> None:
    # The fault syntax the tests above use, as a file.
    path = tmp_path / "faults.yaml"
    path.write_text(
        yaml.safe_dump(
            fleet(
                {"index": 0, "faults": [{"type": "lost", "at": "1m", "until": "2m"}]},
                nvml={"faults": [{"type": "error", "call": "nvmlDeviceGetPowerUsage", "every": 3, "error": "NoData"}]},
            )
        )
    )
    scenario = load_scenario(str(path))
    (lost,) = scenario.gpus[0].faults
    assert (lost.type, lost.at, lost.until) == ("lost", 60.0, 120.0)
    (err,) = scenario.nvml_faults
    assert (err.call, err.every, err.error) == ("nvmlDeviceGetPowerUsage", 3, "NoData")


async def test_first_samples_after_an_empty_poll_cover_the_whole_interval(sim: Callable[..., SimHost]) -> None:
    # At t=0 the driver has no sample yet; the next poll must account the whole 5 s, not one sample.
    host = sim("p4d-idle-fleet")
    await host.source.start()
    first = {r.identity.device: r for r in (await host.source.poll()).devices}
    assert first["nvidia3"].covered_seconds == 0.0
    second = {r.identity.device: r for r in (await host.step()).devices}
    assert abs(second["nvidia3"].covered_seconds - INTERVAL) < 0.2
    assert abs(second["nvidia3"].busy_seconds - 0.55 * INTERVAL) < 0.1  # constant 55 %
    assert abs(second["nvidia4"].utilization - 0.10) < 0.02  # 100 ms busy every second, not one idle sample


async def test_driver_reload_reinitialises_nvml_and_counters_continue(sim: Callable[..., SimHost]) -> None:
    # At t=60 s the driver reloads: every old handle answers GpuIsLost and the energy counter
    # restarts at 0. The source must notice, re-initialise NVML and find the GPUs again.
    scenario = {
        "host": {"instance_type": "g6.12xlarge"},
        "nvml": {"faults": [{"type": "reload", "at": "60s"}]},
        "gpus": [
            {"index": 0, "model": "NVIDIA L4", "utilization": {"constant": 0.5}},
            {"index": 1, "model": "NVIDIA L4"},
        ],
    }
    host = sim(scenario, retry_initial=1.0)
    inits = 0

    def count_init(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal inits
        inits += 1
        return original(*args, **kwargs)

    host.wrap("nvmlInit", count_init)
    await host.source.start()
    await host.source.poll()
    reports = [await host.step() for _ in range(40)]  # 200 s at 5 s
    assert inits == 2
    down = [r for r in reports if not any(d.up for d in r.devices)]
    assert 1 <= len(down) <= 5  # lost for a few polls around the reload, then found again
    last = {d.identity.device: d for d in reports[-1].devices}
    assert last["nvidia0"].up and last["nvidia1"].up
    assert last["nvidia0"].utilization is not None and abs(last["nvidia0"].utilization - 0.5) < 0.02
    busy_after = sum(r.devices[0].busy_seconds or 0.0 for r in reports[-10:])
    assert abs(busy_after - 0.5 * 10 * INTERVAL) < 0.5


async def test_mig_instances_created_and_destroyed_while_running_are_followed(sim: Callable[..., SimHost]) -> None:
    # GPU 0 starts with a 3g and a 2g instance; at 100 s the 2g is destroyed and a 1g created.
    scenario = {
        "host": {"instance_type": "p4de.24xlarge"},
        "gpus": [
            {
                "index": 0,
                "model": "NVIDIA A100-SXM4-80GB",
                "mig": [
                    {"gi": 1, "slices": 3, "memory_total": "40GiB"},
                    {"gi": 5, "slices": 2, "memory_total": "20GiB", "end": "100s"},
                    {"gi": 13, "slices": 1, "memory_total": "10GiB", "start": "100s"},
                ],
            }
        ],
    }
    host = sim(scenario)
    await host.source.start()
    first = {r.identity.device: r for r in (await host.source.poll()).devices}
    assert sorted(first) == ["nvidia0", "nvidia0-mig1", "nvidia0-mig5"]
    assert abs(first["nvidia0"].identity.price_units - 2 / 7) < 1e-9  # 2 of 7 slices unallocated
    reports = [await host.step() for _ in range(60)]  # 300 s at 5 s: at least one inventory refresh after 100 s
    last = {r.identity.device: r for r in reports[-1].devices}
    assert sorted(last) == ["nvidia0", "nvidia0-mig1", "nvidia0-mig13"]
    assert all(r.up for r in last.values())
    assert abs(last["nvidia0"].identity.price_units - 3 / 7) < 1e-9
    assert abs(last["nvidia0-mig13"].identity.price_units - 1 / 7) < 1e-9
    assert reports[-1].complete  # so the ledger drops nvidia0-mig5
