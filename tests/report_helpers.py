"""What the report tests share: the synthetic fleet with its ground truth, a backfilled Prometheus
serving it, and running `accel-cost-exporter report` as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import ROOT, bench_module, exporter_env, pick_free_port

fleet = bench_module("report_fleet")

P4D = 21.957642  # p4d.24xlarge, as the built-in catalogue lists it
G5_12 = 5.672
G6_1 = 0.8048
RANGE = 3 * 86400
# The report's end: whole hours, two hours back, so every scrape interval divides the range.
END = fleet.hour_floor(time.time()) - 7200
START = END - RANGE
DATA_START = START - 7200
BUSY_ID = "i-0b0b0b0b0b0b0b0b0"  # h-busy's EC2 instance ID


def fleet_hosts() -> list[Any]:
    """Every host of the test fleet; job "accel" (5 min scrapes), "gappy" (a 6 h hole), "sparse" (30 min)."""
    h = fleet.HostSpec
    c = fleet.constant
    return [
        h("h-busy:11094", "p4d.24xlarge", "search", 8, P4D, c(0.95), memory_gib=38, instance_id=BUSY_ID),
        h("h-idle:11094", "p4d.24xlarge", "recsys", 8, P4D, c(0.0)),
        h(
            "h-abandoned:11094",
            "p4d.24xlarge",
            "research",
            8,
            P4D,
            c(0.0, 0.9),
            memory_gib=38,
            held=frozenset({0}),
            process_start={0: END - 20 * 86400},
        ),
        h(
            "h-held:11094",
            "g5.12xlarge",
            "nlp",
            4,
            G5_12,
            c(0.8, 0.0, 0.8),
            memory_gib=23,
            model="NVIDIA A10G",
            held=frozenset({1}),
            process_start={1: END - 2 * 86400},
        ),
        h("h-under-1:11094", "p4d.24xlarge", "ranking", 8, P4D, c(0.2), memory_gib=35),
        h("h-under-2:11094", "p4d.24xlarge", "ranking", 8, P4D, c(0.25), memory_gib=35),
        h("h-smallmem:11094", "p4d.24xlarge", "vision", 8, P4D, c(0.6), memory_gib=12),
        h(
            "h-longrun:11094",
            "g6.xlarge",
            "nlp",
            1,
            G6_1,
            c(0.05),
            workload="batch",
            memory_gib=20,
            model="NVIDIA L4",
            process_start={0: END - RANGE - 3600},
        ),
        h("h-unpriced:11094", "g5.xlarge", "nlp", 1, None, c(0.5), memory_gib=20, model="NVIDIA A10G"),
        h("h-reset:11094", "g6.xlarge", "search", 1, G6_1, c(0.7), memory_gib=20, reset_at=END - 86400),
        h(
            "h-gap:11094",
            "g6.xlarge",
            "search",
            1,
            G6_1,
            c(0.7),
            job="gappy",
            gap=(END - 2 * 86400, END - 2 * 86400 + 6 * 3600),
        ),
        h("r-host:11094", "g6.xlarge", "search", 1, G6_1, c(0.7), job="ruled", memory_gib=20, rule_utilization=0.5),
        h("s-idle:11094", "g5.12xlarge", "recsys", 4, G5_12, c(0.0), job="sparse", scrape=1800),
        h("s-busy:11094", "g5.12xlarge", "search", 4, G5_12, c(0.9), job="sparse", scrape=1800, memory_gib=23),
    ]


# (kind, instance, device) of every finding the "accel" job must produce, and no other.
EXPECTED_FINDINGS = {
    ("idle_host", "h-idle:11094", None),
    ("abandoned", "h-abandoned:11094", "nvidia0"),
    ("held_idle", "h-held:11094", "nvidia1"),
    ("underutilized", "h-under-1:11094", None),
    ("underutilized", "h-under-2:11094", None),
    ("long_running_unchecked", "h-longrun:11094", "nvidia0"),
}


@dataclass(frozen=True)
class Server:
    """A query API serving the test fleet, with the ground truth per host."""

    url: str
    truth: Any
    hosts: list[Any]


def build_fleet(workdir: Path) -> tuple[Path, Any, list[Any]]:
    """Write the fleet as OpenMetrics; returns the file, the truth and the hosts."""
    hosts = fleet_hosts()
    path = workdir / "fleet.om"
    truth = fleet.write_openmetrics(hosts, DATA_START, END, START, path)
    return path, truth, hosts


def serve_prometheus(workdir: Path) -> Iterator[Server]:
    """Backfill a TSDB with the fleet and serve it from a real Prometheus."""
    openmetrics, truth, hosts = build_fleet(workdir)
    tsdb = workdir / "tsdb"
    fleet.create_blocks(openmetrics, tsdb)
    with fleet.prometheus(tsdb, pick_free_port(), workdir / "prometheus.log") as url:
        yield Server(url, truth, hosts)


def serve_victoria_metrics(workdir: Path) -> Iterator[Server]:
    """Load the fleet into a single-node VictoriaMetrics and serve it."""
    openmetrics, truth, hosts = build_fleet(workdir)
    with fleet.victoria_metrics(workdir / "vm-data", pick_free_port(), workdir / "victoria-metrics.log") as url:
        fleet.import_openmetrics(url, openmetrics)
        yield Server(url, truth, hosts)


def run_report(args: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python -m exporter report ARGS` as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", "report", *args],
        cwd=ROOT,
        env=exporter_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_report(url: str, selector: str = 'job="accel"') -> dict[str, Any]:
    """The JSON report of the test window for `selector`; the run must succeed."""
    result = run_report(window_args(url, "--format", "json", "--selector", selector))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def window_args(url: str, *extra: str) -> list[str]:
    """The flags for the test fleet's window, against `url`."""
    return ["--prometheus.url", url, "--range", "3d", "--end", str(int(END)), "--quiet", *extra]


def chromium(page: Path, screenshot: Path) -> str:
    """Load `page` in headless Chromium (no network), save a screenshot; returns Chromium's log."""
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2400",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr
