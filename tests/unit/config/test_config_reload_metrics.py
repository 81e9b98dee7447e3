"""The outcome of the last configuration load as metrics, the way Prometheus and Alertmanager report theirs.

accel_exporter_config_last_reload_successful is 1 or 0; the success timestamp moves only when a
load succeeds. The daemon runs as a real process and receives real SIGHUPs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import bench_module

from exporter.accounting.ledger import Ledger
from exporter.config.model import AccountingSettings
from exporter.exposition.collector import build_families

soak: Any = bench_module("soak")
SUCCESSFUL = "accel_exporter_config_last_reload_successful"
TIMESTAMP = "accel_exporter_config_last_reload_success_timestamp_seconds"


def test_start_bad_reload_then_good_reload(tmp_path: Path, run_exporter: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: 30.0}\n")
    before_start = time.time()
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--config.file", str(config), "--collector.interval", "200ms"])

    def wait_for(condition: Callable[[Any], bool]) -> Any:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            samples = soak.parse_exposition(exporter.metrics())
            if condition(samples):
                return samples
            time.sleep(0.05)
        pytest.fail(f"condition not met; log:\n{exporter.log()}")

    def reload_state(samples: Any) -> tuple[float, float]:
        return soak.total(samples, SUCCESSFUL), soak.total(samples, TIMESTAMP)

    def refused(samples: Any) -> float:
        return float(soak.total(samples, "accel_exporter_errors_total", collector="config", reason="reload_invalid"))

    # Start: 1, and the time the configuration was loaded.
    samples = wait_for(lambda s: SUCCESSFUL in s)
    successful, started_at = reload_state(samples)
    assert successful == 1
    assert before_start <= started_at <= time.time()

    # A bad file: 0, and the success timestamp stays where it was.
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: -5}\n")
    exporter.signal(signal.SIGHUP)
    samples = wait_for(lambda s: refused(s) == 1)
    assert reload_state(samples) == (0, started_at)

    # A good file: 1 again, with a newer timestamp.
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: 40.0}\n")
    before_reload = time.time()
    exporter.signal(signal.SIGHUP)
    samples = wait_for(lambda s: soak.total(s, SUCCESSFUL) == 1)
    successful, reloaded_at = reload_state(samples)
    assert successful == 1
    assert started_at < before_reload <= reloaded_at <= time.time()
    assert soak.total(samples, "accel_instance_price_dollars_per_hour") == 40.0
    assert exporter.stop() == 0


def test_a_failure_before_any_success_shows_no_timestamp() -> None:
    ledger = Ledger(AccountingSettings())
    names = {f.name for f in build_families(ledger.snapshot(0.0))}
    assert not {SUCCESSFUL, TIMESTAMP} & names  # nothing recorded: nothing shown
    ledger.record_config_reload(False, 100.0)
    families = {f.name: f.samples for f in build_families(ledger.snapshot(1.0))}
    assert [s.value for s in families[SUCCESSFUL]] == [0]
    assert TIMESTAMP not in families
