"""The real-GPU scripts (`make gpu-check`, bench/nvml_cost.py) where no GPU is: they must not rot.

On a GPU host they talk to the real driver; here gpu-check must say plainly that it needs one,
and nvml_cost's measuring code runs against the simulated driver, through the production source.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, ExporterProcess, bench_module, wait_until

from exporter.clock import SystemClock
from exporter.sim.fake_nvml import FakeNvml
from exporter.sim.scenario import load_scenario


def test_gpu_check_without_a_driver_says_so() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "make gpu-check needs a GPU host" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_nvml_cost_measures_each_call_and_whole_polls(capsys: pytest.CaptureFixture[str]) -> None:
    nvml_cost = bench_module("nvml_cost")
    fake = FakeNvml(load_scenario("p4d-idle-fleet"), SystemClock()).module()
    fake.nvmlInit()
    try:
        nvml_cost.per_call(fake, 3)
    finally:
        fake.nvmlShutdown()
    nvml_cost.polls(fake, 3, False)
    out = capsys.readouterr().out
    assert "GetSamples (since last)" in out and "GetTotalEnergyConsumption" in out
    assert "NvmlSource poll at 1 s, 3 polls, 8 device(s)" in out
    assert "errors in the last report: none" in out
    assert "sample buffer now:" in out
    assert "share of a core at this interval" in out


def gpm_calls_on(scenario: str) -> Any:
    """bench/nvml_cost.py's GPM section on a simulated host; returns the fake module."""
    fake = FakeNvml(load_scenario(scenario), SystemClock()).module()
    fake.nvmlInit()
    try:
        bench_module("nvml_cost").gpm_calls(fake, 3)
    finally:
        fake.nvmlShutdown()
    return fake


def test_nvml_cost_measures_gpm_calls_and_the_cost_per_core(capsys: pytest.CaptureFixture[str]) -> None:
    fake = gpm_calls_on("h100-gpm")
    bench_module("nvml_cost").polls(fake, 3, False, 0.2)
    out = capsys.readouterr().out
    for call in ("GpmQueryDeviceSupport", "GpmSampleGet", "GpmMetricsGet (5 metrics)"):
        line = next(line for line in out.splitlines() if line.strip().startswith(call))
        assert "Error" not in line, line
    assert "NvmlSource poll at 0.2 s, 3 polls, 11 device(s)" in out
    assert "% scaled to 8 GPUs" in out


def test_nvml_cost_says_when_a_gpu_has_no_gpm(capsys: pytest.CaptureFixture[str]) -> None:
    gpm_calls_on("p4d-idle-fleet")
    assert "GPM: this GPU has none" in capsys.readouterr().out


def test_gpu_check_gpm_proof_on_the_simulator(run_exporter: Callable[..., ExporterProcess], tmp_path: Path) -> None:
    # As on a real GPU, each load runs alone between idle stretches, from 15 s to 19 s of the
    # scenario: nvidia0 spins one block (1 of the simulator's 98 SMs), nvidia1 runs a matmul.
    def loaded(level: float) -> dict[str, Any]:
        return {
            "schedule": {"steps": [{"at": 0, "value": 0}, {"at": "15s", "value": level}, {"at": "19s", "value": 0}]}
        }

    scenario = {
        "name": "gpm-check",
        "gpus": [
            {"index": 0, "model": "NVIDIA H100 80GB HBM3", "utilization": loaded(1.0), "sm_activity": loaded(1 / 98)},
            {"index": 1, "model": "NVIDIA H100 80GB HBM3", "utilization": loaded(0.97), "sm_activity": loaded(0.9)},
        ],
    }
    path = tmp_path / "gpm-check.yaml"
    path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
    gpu_check = bench_module("gpu_check")
    launched = time.monotonic()
    exporter = run_exporter(["--demo", str(path), "--collector.interval", "500ms"])
    assert time.monotonic() - launched < 12, "the exporter must be up before the simulated loads start"

    def until_the_load_ends_on(device: str) -> Callable[[], None]:
        # The simulated load runs on the scenario's clock, not in a child process: wait until the
        # exporter has seen it start and end, however late a loaded machine runs the exporter.
        seen: list[float] = []

        def utilization() -> float:
            return gpu_check.value(gpu_check.scrape(exporter.port), "accel_utilization_ratio", device) or 0.0

        def ended() -> bool:
            seen.append(utilization())
            return max(seen) > 0.0 and seen[-1] == 0.0

        return lambda: wait_until(ended, f"the simulated load on {device} to start and end", timeout=120)

    with ThreadPoolExecutor(2) as pool:  # both at once: each waits for the GPM reads after the load
        spin = pool.submit(gpu_check.measure_gpm, exporter.port, "nvidia0", until_the_load_ends_on("nvidia0"), 4.0)
        matmul = pool.submit(gpu_check.measure_gpm, exporter.port, "nvidia1", until_the_load_ends_on("nvidia1"), 4.0)
        spin_rates, matmul_rates = spin.result(timeout=120), matmul.result(timeout=120)
    assert spin_rates == pytest.approx((1.0, 1 / 98), rel=0.05)
    assert matmul_rates == pytest.approx((0.97, 0.9), rel=0.05)
    ok, line = gpu_check.judge_spin(*spin_rates, 98)
    assert ok and line.startswith("PASS: single-block spin: utilization 1.0"), line
    ok, line = gpu_check.judge_matmul(*matmul_rates)
    assert ok and line.startswith("PASS: matmul: utilization 0.97"), line
    # Each judgement fails on the other's numbers: a spin is no matmul, a matmul no spin.
    assert not gpu_check.judge_matmul(*spin_rates)[0]
    assert not gpu_check.judge_spin(*matmul_rates, 98)[0]
