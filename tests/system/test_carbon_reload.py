"""SIGHUP reloads `pricing.owned` and `carbon` in a running exporter: new prices, tariff and grid
intensity apply from the reload on, no counter goes backwards, and a bad new section is refused
while the old values stay. A real exporter process (the demo's simulated GPUs) and real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, bench_module, exporter_env, wait_until

soak: Any = bench_module("soak")
Samples = dict[str, list[tuple[dict[str, str], float]]]

JOULES_PER_KWH = 3.6e6
HOURS_4Y = 4 * 8760.0
RELOADED = "accel_exporter_config_last_reload_successful"
INTENSITY = "accel_carbon_grid_intensity_grams_per_kwh"
# Money and grams that arrive with each energy read.
COUNTERS = ("accel_cost_dollars_total", "accel_carbon_grams_total", "accel_energy_joules_total")

BEFORE = """
pricing:
  owned: {purchase_price: 240000, lifetime_years: 4, overhead_per_device_hour: 0.15, electricity_per_kwh: 0.12,
          pue: 1.4}
carbon: {grid_intensity: 400}
"""
AFTER = """
pricing:
  owned: {purchase_price: 480000, lifetime_years: 4, electricity_per_kwh: 0.30, pue: 1.2}
carbon: {grid_intensity: 400, pue: 1.1, schedule_file: SCHEDULE}
"""


class Scrapes:
    """Every scrape of one exporter, checked as it comes: no counter series ever goes down."""

    def __init__(self, exporter: Any) -> None:
        self.exporter = exporter
        self.last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def take(self) -> Samples:
        samples: Samples = soak.parse_exposition(self.exporter.metrics())
        for name, series in samples.items():
            if not name.endswith("_total"):
                continue
            for labels, value in series:
                key = (name, tuple(sorted(labels.items())))
                assert value >= self.last.get(key, 0.0), f"{key} went from {self.last[key]} to {value}"
                self.last[key] = value
        return samples

    def until(self, check: Any, what: str) -> Samples:
        """The first scrape for which `check(samples)` holds."""
        found: list[Samples] = []

        def scraped() -> bool:
            samples = self.take()
            if check(samples):
                found.append(samples)
                return True
            return False

        wait_until(scraped, what, timeout=90, explain=self.exporter.log)
        return found[0]


def per_device(samples: Samples, name: str) -> dict[str, float]:
    return dict(soak.values(samples, name, "device"))


def energy_moved(since: Samples) -> Any:
    """A check: every GPU's energy counter has been read again since `since`."""
    start = per_device(since, "accel_energy_joules_total")
    return lambda now: all(per_device(now, "accel_energy_joules_total")[d] > j for d, j in start.items())


def assert_prices(samples: Samples, per_hour: float) -> None:
    prices = per_device(samples, "accel_price_dollars_per_hour")
    assert len(prices) == 8 and all(v == pytest.approx(per_hour, rel=1e-12) for v in prices.values()), prices


def check_window(first: Samples, second: Samples, tariff: float, grams_per_kwh: float) -> None:
    """Between two scrapes: cost = price x time + kWh x tariff, grams = kWh x intensity x PUE, per device."""
    price = per_device(second, "accel_price_dollars_per_hour")
    for name, series in (("first", first), ("second", second)):
        assert set(per_device(series, "accel_energy_joules_total")) == set(price), name
    deltas = {
        name: {d: v - per_device(first, name).get(d, 0.0) for d, v in per_device(second, name).items()}
        for name in (*COUNTERS, "accel_state_seconds_total")
    }
    for device, per_hour in price.items():
        kwh = deltas["accel_energy_joules_total"][device] / JOULES_PER_KWH
        seconds = deltas["accel_state_seconds_total"][device]
        expected_cost = per_hour / 3600 * seconds + kwh * tariff
        assert deltas["accel_cost_dollars_total"][device] == pytest.approx(expected_cost, rel=1e-9), device
        assert deltas["accel_carbon_grams_total"][device] == pytest.approx(kwh * grams_per_kwh, rel=1e-9), device


def test_sighup_reloads_owned_prices_and_carbon(tmp_path: Path, run_exporter: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BEFORE)
    now = time.time()
    schedule = tmp_path / "grid.csv"
    schedule.write_text(
        f"start_utc,end_utc,grams_per_kwh\n{_iso(now - 86400)},{_iso(now + 86400)},100\n"  # in force for the whole test
    )
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--config.file", str(config), "--collector.interval", "200ms"])
    scrapes = Scrapes(exporter)

    # Before: the owned host's amortization split over 8 GPUs, plus overhead; tariff x PUE; 400 g/kWh x PUE 1.4.
    first = scrapes.until(lambda s: soak.total(s, INTENSITY, source="config") == 400, "the fixed intensity")
    assert soak.total(first, "accel_instance_info", price_source="owned") == 1
    assert_prices(first, 240000 / HOURS_4Y / 8 + 0.15)
    second = scrapes.until(energy_moved(first), "an energy read under the first configuration")
    check_window(first, second, tariff=0.12 * 1.4, grams_per_kwh=400 * 1.4)

    # SIGHUP with new owned prices, tariff, PUE and a schedule: in force from the reload on.
    config.write_text(AFTER.replace("SCHEDULE", str(schedule)))
    exporter.signal(signal.SIGHUP)
    reloaded = scrapes.until(lambda s: soak.total(s, INTENSITY, source="schedule") == 100, "the schedule in force")
    assert soak.total(reloaded, RELOADED) == 1
    assert soak.total(reloaded, INTENSITY) == 100  # one source at a time
    assert_prices(reloaded, 480000 / HOURS_4Y / 8)
    later = scrapes.until(energy_moved(reloaded), "an energy read under the new configuration")
    check_window(reloaded, later, tariff=0.30 * 1.2, grams_per_kwh=100 * 1.1)

    # A bad new carbon section (a schedule file with an absurd value) is refused; the old values stay.
    schedule.write_text(f"start_utc,end_utc,grams_per_kwh\n{_iso(now - 60)},{_iso(now + 86400)},400000\n")
    config.write_text(AFTER.replace("SCHEDULE", str(schedule)).replace("480000", "960000"))
    exporter.signal(signal.SIGHUP)
    refused = scrapes.until(lambda s: soak.total(s, RELOADED) == 0, "the bad reload to be refused")
    assert soak.total(refused, "accel_exporter_errors_total", collector="config", reason="reload_invalid") == 1
    assert "grid.csv line 2: grams_per_kwh '400000' is not a number from 0 to 2000" in exporter.log()
    kept = scrapes.until(energy_moved(refused), "an energy read after the refused reload")
    assert soak.total(kept, INTENSITY, source="schedule") == 100
    check_window(refused, kept, tariff=0.30 * 1.2, grams_per_kwh=100 * 1.1)

    # A bad pricing.owned section is refused the same way.
    config.write_text(AFTER.replace("SCHEDULE", str(tmp_path / "missing.csv")).replace("lifetime_years: 4, ", ""))
    exporter.signal(signal.SIGHUP)
    scrapes.until(
        lambda s: soak.total(s, "accel_exporter_errors_total", collector="config", reason="reload_invalid") == 2,
        "the second bad reload to be refused",
    )
    log = exporter.log()
    assert "'pricing.owned.lifetime_years': missing" in log and "missing.csv: file not found" in log
    final = scrapes.take()
    assert_prices(final, 480000 / HOURS_4Y / 8)
    assert exporter.stop() == 0


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_bad_schedule_at_startup_stops_the_exporter_with_a_clear_message(tmp_path: Path) -> None:
    schedule = tmp_path / "grid.csv"
    schedule.write_text("start_utc,end_utc,grams_per_kwh\n2026-12-05T02:00:00Z,2026-12-05T01:00:00Z,300\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"carbon: {{schedule_file: {schedule}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--demo", "p4d-idle-fleet"],
        cwd=ROOT,
        env=exporter_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"{schedule} line 2: end_utc 2026-12-05T01:00:00Z is not after start_utc" in result.stderr
    assert "Traceback" not in result.stderr
