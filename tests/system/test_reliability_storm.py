"""A short scrape storm (bench/storm.py): 50 concurrent scrapers for 5 s against 64 GPUs.

No request may fail or come back truncated, and the poll loop must keep its beat: no poll
delayed by more than one interval. The 200-scraper, 60 s figures are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import bench_module

storm: Any = bench_module("storm")
soak: Any = bench_module("soak")


def test_fifty_scrapers_for_five_seconds(tmp_path: Path, run_exporter: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(storm.FLEET_64_CONFIG)
    interval = 1.0
    exporter = run_exporter(
        ["--demo", str(storm.FLEET_64), "--config.file", str(config), "--collector.interval", f"{interval}s"]
    )
    before = soak.parse_exposition(exporter.metrics())
    result = asyncio.run(storm.storm(exporter.port, scrapers=50, seconds=5.0, interval=interval, pid=exporter.proc.pid))
    summary = result.summary()
    assert result.errors == [], result.errors[:5]
    assert result.requests >= 500, summary
    assert result.percentile(99) < 2.0, summary
    # Every poll landed on time: about one per interval, none late by a whole interval.
    assert len(result.poll_times) >= 4, summary
    assert max(result.poll_gaps) <= 2 * interval, summary
    after = soak.parse_exposition(exporter.metrics())
    assert len(after["accel_device_info"]) == 64
    assert soak.total(after, "accel_cost_dollars_total") > soak.total(before, "accel_cost_dollars_total")
    assert exporter.get("/-/healthy").status == 200
    assert exporter.stop() == 0
