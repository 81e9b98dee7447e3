"""The real-GPU scripts (`make gpu-check`, bench/nvml_cost.py) where no GPU is: they must not rot.

On a GPU host they talk to the real driver; here gpu-check must say plainly that it needs one,
and nvml_cost's measuring code runs against the simulated driver, through the production source.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, bench_module

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
