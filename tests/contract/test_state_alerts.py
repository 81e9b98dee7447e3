"""The real alert rules on the demo's own series (issue 11): the abandoned job of p4d-idle-fleet
raises AcceleratorAbandoned during a demo run, and on a100-mig the fully sliced parent raises no
AcceleratorIdle while the partly sliced one and the free slice do.

The demo daemon runs in process on the injected clock, is scraped once a simulated minute, and
`promtool test rules` evaluates the shipped rules (annotations stripped) on what it exposed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from harness import demo_daemon
from prometheus_client.parser import text_string_to_metric_families
from test_alerts_promtool import _stripped_tree

from exporter.clock import ManualClock

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")

# What the idle alerts and the owner recording rule read; the rest would only slow promtool down.
METRICS = ("accel_idle_seconds", "accel_state", "accel_cost_dollars_total", "accel_device_up")
INSTANCE = {"job": "accel", "instance": "demo"}


async def _scraped(demo: str, minutes: int) -> dict[str, list[float | None]]:
    """promtool series selectors -> one value a simulated minute (None where absent)."""
    clock = ManualClock()
    series: dict[str, list[float | None]] = {}
    async with demo_daemon(demo, clock) as daemon:
        daemon._start_idle_clock()
        for source in daemon.sources:
            await source.start()
        for minute in range(minutes):
            clock.advance(60.0)
            await daemon.poll_once()
            text = await daemon.cache.get(openmetrics=False)
            assert text is not None
            for family in text_string_to_metric_families(text.body.decode()):
                for s in family.samples:
                    if s.name in METRICS:
                        labels = ",".join(f'{k}="{v}"' for k, v in sorted({**s.labels, **INSTANCE}.items()))
                        series.setdefault(f"{s.name}{{{labels}}}", [None] * minutes)[minute] = s.value
    return series


def _run_promtool(tmp_path: Path, series: dict[str, list[float | None]], tests: list[dict[str, object]]) -> str:
    tests_dir = _stripped_tree(tmp_path)
    document = {
        "rule_files": ["../../alerts/accel-cost.rules.yml", "../../alerts/accel-cost.alerts.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": ["accel-cost.rules", "accel-cost"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": name, "values": " ".join("_" if v is None else repr(v) for v in values)}
                    for name, values in series.items()
                ],
                "alert_rule_test": tests,
            }
        ],
    }
    path = tests_dir / "state_demo.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    result = subprocess.run(
        ["promtool", "test", "rules", path.name], cwd=tests_dir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _alerts(name: str, team: str, devices: list[str]) -> list[dict[str, object]]:
    return [
        {"exp_labels": {"alertname": name, "severity": "warning", "team": team, "device": d, **INSTANCE}}
        for d in devices
    ]


async def test_demo_abandoned_job_raises_the_abandoned_alert(tmp_path: Path) -> None:
    series = await _scraped("p4d-idle-fleet", 12)
    _run_promtool(
        tmp_path,
        series,
        [
            # Four hours idle and held from the first scrape; the alert fires once its 5m `for` ran.
            {"eval_time": "11m", "alertname": "AcceleratorAbandoned", "exp_alerts": _alerts(
                "AcceleratorAbandoned", "ml-platform", ["nvidia2"])},
            {"eval_time": "11m", "alertname": "AcceleratorIdle", "exp_alerts": _alerts(
                "AcceleratorIdle", "ml-platform", ["nvidia0", "nvidia1"])},
        ],
    )  # fmt: skip


async def test_fully_sliced_mig_parent_raises_no_idle_alert(tmp_path: Path) -> None:
    series = await _scraped("a100-mig", 70)
    assert not [name for name in series if 'device="nvidia5"' in name and name.startswith("accel_state")]
    _run_promtool(
        tmp_path,
        series,
        [
            # Idle for 1 h at 60m, `for: 5m`: firing at 69m for the partly sliced parents' free share
            # and the free slice; never for nvidia5, whose slices are all held.
            {"eval_time": "69m", "alertname": "AcceleratorIdle", "exp_alerts": _alerts(
                "AcceleratorIdle", "research", ["nvidia0", "nvidia0-mig13", "nvidia2"])},
            {"eval_time": "69m", "alertname": "AcceleratorHostIdle", "exp_alerts": []},
        ],
    )  # fmt: skip
