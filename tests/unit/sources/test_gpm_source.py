"""GPM in the NVML source against the simulated driver: exact SM/tensor/DRAM integration at 1 s,
5 s and 30 s polls, MIG busy time from graphics activity, and the fallbacks (no GPM, counters in use)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pynvml
import pytest
import pytest_asyncio
from harness import FakeNvmlHost

from exporter.sim.patterns import RandomSteps

H100 = "NVIDIA H100 80GB HBM3"
SM = pynvml.NVML_GPM_METRIC_SM_UTIL
TENSOR = pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL
DRAM = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
GRAPHICS = pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL


@pytest_asyncio.fixture
async def hosts() -> AsyncIterator[list[FakeNvmlHost]]:
    made: list[FakeNvmlHost] = []
    yield made
    for host in made:
        await host.source.stop()


def host_of(hosts: list[FakeNvmlHost], scenario: dict[str, Any] | str) -> FakeNvmlHost:
    host = FakeNvmlHost(scenario)
    hosts.append(host)
    return host


def varying_h100(**extra: Any) -> dict[str, Any]:
    """One H100 whose utilization, SM, tensor and DRAM activity all change every 1.3 s."""
    gpu = {
        "index": 0,
        "model": H100,
        "utilization": {"random": {"mean": 0.7, "spread": 0.3, "step": "1.3s", "seed": 1}},
        "sm_activity": {"random": {"mean": 0.4, "spread": 0.35, "step": "1.3s", "seed": 2}},
        "tensor_activity": {"burst": {"busy": "0.7s", "period": "2.9s", "value": 0.9}},
        "dram_activity": {
            "schedule": {"steps": [{"at": 0, "value": 0.2}, {"at": "17s", "value": 0.6}], "repeat": "41s"}
        },
        **extra,
    }
    return {"gpus": [gpu]}


@pytest.mark.parametrize("interval", [1.0, 5.0, 30.0])
async def test_gpm_activity_integrates_exactly(hosts: list[FakeNvmlHost], interval: float) -> None:
    host = host_of(hosts, varying_h100())
    polls = int(300 / interval)
    totals = {SM: 0.0, TENSOR: 0.0, DRAM: 0.0}
    first_read: float | None = None
    last_read = 0.0
    for _ in range(polls):
        gpu = (await host.step(interval))["nvidia0"]
        now = host.fake.now()
        if first_read is None:
            assert gpu.gpm is None  # the first sample only starts the first interval
            first_read = now
            continue
        if gpu.gpm is None:  # polls before the first full interval (every 4th 1 s poll reads)
            assert last_read == 0.0
            continue
        if gpu.gpm.covered_seconds > 0:
            last_read = now
        totals[SM] += gpu.gpm.sm_active_seconds
        totals[TENSOR] += gpu.gpm.tensor_active_seconds
        totals[DRAM] += gpu.gpm.dram_active_seconds
    assert first_read is not None and last_read - first_read >= 240
    for metric, total in totals.items():
        truth = host.fake.gpm_truth("0", metric, first_read, last_read)
        assert truth > 10
        assert total == pytest.approx(truth, rel=0.01), metric


async def test_gpm_ratios_are_the_last_intervals_averages(hosts: list[FakeNvmlHost]) -> None:
    host = host_of(hosts, "h100-gpm")
    await host.step(5.0)
    devices = await host.step(5.0)
    spinner = devices["nvidia4"]
    assert spinner.utilization == pytest.approx(1.0)
    assert spinner.gpm is not None
    assert spinner.gpm.sm_activity == pytest.approx(0.03)
    assert spinner.gpm.sm_occupancy == pytest.approx(0.02)
    assert spinner.gpm.sm_active_seconds == pytest.approx(0.15)
    trainer = devices["nvidia7"].gpm
    assert trainer is not None
    assert (trainer.sm_activity, trainer.tensor_activity, trainer.dram_activity) == pytest.approx((0.6, 0.4, 0.3))


async def test_mig_instances_get_busy_time_from_gpm(hosts: list[FakeNvmlHost]) -> None:
    host = host_of(hosts, "h100-gpm")
    await host.step(5.0)
    start = host.fake.now()
    busy: dict[str, float] = {}
    for _ in range(12):
        devices = await host.step(5.0)
        for name, reading in devices.items():
            if reading.identity.kind == "mig":
                assert reading.busy_seconds is not None and reading.utilization is not None
                busy[name] = busy.get(name, 0.0) + reading.busy_seconds
    end = host.fake.now()
    assert busy["nvidia6-mig1"] == pytest.approx(host.fake.gpm_truth("6/1", GRAPHICS, start, end), rel=0.01)
    assert busy["nvidia6-mig1"] == pytest.approx(0.85 * 60, rel=0.01)
    assert busy["nvidia6-mig5"] == 0.0
    assert busy["nvidia6-mig13"] == pytest.approx(host.fake.gpm_truth("6/13", GRAPHICS, start, end), rel=0.01)
    assert devices["nvidia6-mig1"].utilization == pytest.approx(0.85)
    assert devices["nvidia6-mig1"].covered_seconds == pytest.approx(5.0)
    # The parent of the slices has no activity of its own, with or without GPM.
    assert devices["nvidia6"].utilization is None and devices["nvidia6"].gpm is None


async def test_no_gpm_before_hopper_with_one_log_line_per_gpu(
    hosts: list[FakeNvmlHost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = host_of(hosts, "a100-mig")
    for _ in range(4):
        devices = await host.step(5.0)
    assert all(d.gpm is None for d in devices.values())
    # MIG instances on an A100 still have no activity at all: unknown, never 0.
    assert devices["nvidia0-mig1"].utilization is None and devices["nvidia0-mig1"].busy_seconds is None
    assert devices["nvidia1"].utilization == pytest.approx(0.8)
    why = [r.getMessage() for r in caplog.records if "no SM or tensor activity" in r.getMessage()]
    # One line per device that was asked (each whole GPU and each MIG instance), not one per poll.
    assert len(why) == len({m.split(":")[0] for m in why}) == 5 + 7
    assert all("Hopper or later" in m for m in why)
    assert not dict(host.last_report.errors)


async def test_gpm_unsupported_by_the_driver_falls_back(
    hosts: list[FakeNvmlHost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    scenario = varying_h100(
        faults=[{"type": "error", "call": "nvmlGpmQueryDeviceSupport", "error": "FunctionNotFound"}]
    )
    host = host_of(hosts, scenario)
    for _ in range(3):
        gpu = (await host.step(5.0))["nvidia0"]
    assert gpu.gpm is None
    assert gpu.busy_seconds is not None and gpu.busy_seconds > 0  # the rest keeps going
    assert any("driver has no GPM calls" in r.getMessage() for r in caplog.records)


async def test_counters_in_use_by_dcgm_are_reported_and_resume(
    hosts: list[FakeNvmlHost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # DCGM profiling holds the counters from 20 s to 50 s.
    fault = {"type": "error", "call": "nvmlGpmSampleGet", "error": "InUse", "at": "20s", "until": "50s"}
    host = host_of(hosts, varying_h100(faults=[fault]))
    in_use = 0
    seen: list[bool] = []
    for _ in range(20):
        gpu = (await host.step(5.0))["nvidia0"]
        in_use += dict(host.last_report.errors).get("gpm_in_use", 0)
        seen.append(gpu.gpm is not None)
        assert gpu.up and gpu.busy_seconds is not None  # utilization, memory, power keep going
    assert host.last_report.success
    assert in_use == 6  # the polls at 20, 25, ..., 45 s
    # Absent while in use and for the first sample after it (a new interval starts), back after.
    assert seen[3:10] == [False] * 7 and all(seen[10:])
    warnings = [r.getMessage() for r in caplog.records if "in use by another client" in r.getMessage()]
    assert len(warnings) == 1
    assert any("free again" in r.getMessage() for r in caplog.records)


def test_random_steps_integrate_across_rounded_step_edges() -> None:
    # 7 * 1.3 is 9.1 in floats, but 9.1 / 1.3 floors to 6: the integral used to loop forever there.
    pattern = RandomSteps(mean=0.5, spread=0.5, step=1.3, seed=1)
    assert pattern.busy(0.0, 20.0) == pytest.approx(sum(pattern.busy(i, i + 1.0) for i in range(20)))


async def test_a_lost_gpu_starts_a_new_gpm_interval_when_back(hosts: list[FakeNvmlHost]) -> None:
    # Lost from 20 s to 40 s: counters read across the loss would mix two lives of the GPU.
    # A second GPU stays up, so NVML is not re-initialised (which would start afresh anyway).
    scenario = varying_h100(faults=[{"type": "lost", "at": "20s", "until": "40s"}])
    scenario["gpus"].append({"index": 1, "model": H100, "utilization": 0.5})
    host = host_of(hosts, scenario)
    covered = []
    for _ in range(16):
        gpu = (await host.step(5.0))["nvidia0"]
        if gpu.gpm is not None:
            covered.append(gpu.gpm.covered_seconds)
    assert covered and max(covered) == pytest.approx(5.0)
    assert gpu.up and gpu.gpm is not None and gpu.gpm.covered_seconds == pytest.approx(5.0)
