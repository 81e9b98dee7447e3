"""A wedged driver call (NVML blocking forever) must not stall scrapes, polls of other sources, or SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from conftest import start_exporter, wait_until

SCENARIO = """
name: wedged-driver
host: {provider: aws, instance_type: g6.12xlarge}
gpus:
  - {index: 0, model: NVIDIA L4, utilization: 0.5, faults: [{type: hang, call: nvmlDeviceGetPowerUsage, at: 2s}]}
  - {index: 1, model: NVIDIA L4}
"""


def _value(text: str, prefix: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_hung_nvml_call_is_reported_and_sigterm_still_exits(tmp_path: Path) -> None:
    scenario = tmp_path / "wedged.yaml"
    scenario.write_text(SCENARIO)
    exporter = start_exporter(["--demo", str(scenario), "--collector.interval", "1s"], tmp_path / "exporter.log")
    try:
        # The hang starts at 2 s; after 3 stalled cycles the devices show down.
        wait_until(
            lambda: _value(exporter.metrics(), 'accel_device_up{device="nvidia1"}') == 0,
            what="nvidia1 to show down behind the wedged call",
        )
        started = time.monotonic()
        text = exporter.metrics()
        assert time.monotonic() - started < 1.0  # scrapes are served from the cache, not blocked
        assert _value(text, 'accel_exporter_collector_success{collector="nvml"}') == 0
        assert (_value(text, 'accel_exporter_errors_total{collector="nvml",reason="timeout"}') or 0) >= 1
        assert _value(text, 'accel_exporter_collector_success{collector="price"}') == 1
        assert _value(text, 'accel_device_up{device="nvidia1"}') == 0  # the one NVML thread is stuck
        assert 'accel_device_info{device="nvidia0"' in text  # devices stay described
        exporter.signal(signal.SIGTERM)
        started = time.monotonic()
        exporter.proc.wait(timeout=10)
        assert time.monotonic() - started < 3.0
        assert exporter.proc.returncode == 0
        assert "stopping nvml: gave up after 0.2s" in exporter.log()  # a source stuck in a poll is not waited for
    finally:
        exporter.stop()
