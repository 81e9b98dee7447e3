"""Scrape latency of the real exporter process on simulated hardware.

For each scenario it starts `python -m exporter --demo <scenario>` on a loopback port and measures,
with a minimal keep-alive HTTP/1.1 client (so the client costs little next to the server):

- 1 scraper, back to back;
- 50 scrapers, closed loop (each sends its next request as soon as the last one finished): the
  worst case, every request queues behind the 49 others; closed loops run for at least
  `--seconds` (default 12 s) so they span several polls, whatever `--requests` says;
- 50 scrapers, open loop, each scraping every `--open-period` seconds at a random phase: many
  Prometheus servers at a far higher rate than the usual 15-60 s.

Requests carry Prometheus' own headers (OpenMetrics preferred, gzip), so they hit the cached
OpenMetrics rendering, as a real scrape does. It also reports the exporter's CPU time per scrape.

    .venv/bin/python bench/bench_scrape.py                 # both scenarios, 2000 requests each
    .venv/bin/python bench/bench_scrape.py --requests 500  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/bench_scrape.py` from a checkout, for bench._common

from bench._common import (  # noqa: E402
    FLEET_64,
    FLEET_64_CONFIG,
    Connection,
    cpu_seconds,
    pct,
    start_demo_exporter,
)


@dataclass
class Exporter:
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start(scenario: str, interval: str, config: Path | None) -> Exporter:
    extra: list[str] = []
    if config is not None and Path(scenario).name == "fleet-64.yaml":
        # The synthetic 64-GPU host has no list price; built-in scenarios keep the demo config.
        extra = ["--config.file", str(config)]
    return Exporter(*start_demo_exporter(scenario, interval, extra))


async def closed_loop(port: int, scrapers: int, requests: int, seconds: float) -> tuple[list[float], int, float]:
    """`scrapers` connections, each sending its next request as soon as the last one returned, until at
    least `requests` requests were made and `seconds` have passed (so the run spans several polls)."""
    connections = [Connection(port) for _ in range(scrapers)]
    for c in connections:
        await c.open()
    latencies: list[float] = []
    remaining = requests
    size = 0
    until = time.perf_counter() + seconds

    async def worker(c: Connection) -> None:
        nonlocal remaining, size
        while remaining > 0 or time.perf_counter() < until:
            remaining -= 1
            t0 = time.perf_counter()
            size = await c.get()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    wall = time.perf_counter() - started
    for c in connections:
        c.close()
    return latencies, size, wall


async def open_loop(port: int, scrapers: int, requests: int, period: float) -> list[float]:
    """`scrapers` scrapers, each every `period` s from a random phase, until `requests` are done."""
    per_scraper = max(1, requests // scrapers)
    latencies: list[float] = []
    rng = random.Random(1)

    async def scraper() -> None:
        c = Connection(port)
        await c.open()
        next_at = time.perf_counter() + rng.uniform(0, period)
        for _ in range(per_scraper):
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            t0 = time.perf_counter()
            await c.get()
            latencies.append(time.perf_counter() - t0)
            next_at += period
        c.close()

    await asyncio.gather(*(scraper() for _ in range(scrapers)))
    return latencies


def line(label: str, latencies: list[float], extra: str = "") -> str:
    ms = [x * 1000 for x in latencies]
    return (
        f"| {label} | {len(ms)} | {pct(ms, 50):.2f} | {pct(ms, 99):.2f} | {max(ms):.2f} | "
        f"{statistics.fmean(ms):.2f} | {extra} |"
    )


async def bench(scenario: str, label: str, args: argparse.Namespace, config: Path | None) -> list[str]:
    exporter = start(scenario, args.interval, config)
    rows = []
    try:
        await asyncio.sleep(args.warmup)
        warm = Connection(exporter.port)
        await warm.open()
        for _ in range(20):
            await warm.get()
        warm.close()
        cpu0 = cpu_seconds(exporter.proc.pid)
        latencies, size, wall = await closed_loop(exporter.port, 1, args.requests, args.seconds)
        cpu1 = cpu_seconds(exporter.proc.pid)
        rows.append(
            line(
                f"{label}, 1 scraper",
                latencies,
                f"{size / 1024:.1f} KiB gzipped; {len(latencies) / wall:.0f} req/s; "
                f"exporter CPU {1000 * (cpu1 - cpu0) / len(latencies):.3f} ms/scrape",
            )
        )
        cpu0 = cpu_seconds(exporter.proc.pid)
        latencies, size, wall = await closed_loop(exporter.port, args.scrapers, args.requests, args.seconds)
        cpu1 = cpu_seconds(exporter.proc.pid)
        rows.append(
            line(
                f"{label}, {args.scrapers} scrapers closed loop",
                latencies,
                f"{len(latencies) / wall:.0f} req/s; exporter CPU {1000 * (cpu1 - cpu0) / len(latencies):.3f} ms/scrape",
            )
        )
        latencies = await open_loop(exporter.port, args.scrapers, args.requests, args.open_period)
        rows.append(
            line(
                f"{label}, {args.scrapers} scrapers every {args.open_period:g} s",
                latencies,
                f"{args.scrapers / args.open_period:.0f} req/s offered",
            )
        )
    finally:
        exporter.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (default 2000)")
    parser.add_argument(
        "--seconds", type=float, default=12.0, help="closed loops run at least this long, over 2+ polls (default 12)"
    )
    parser.add_argument("--scrapers", type=int, default=50, help="concurrent scrapers (default 50)")
    parser.add_argument("--open-period", type=float, default=0.5, help="open-loop scrape period per scraper, s")
    parser.add_argument("--interval", default="5s", help="the exporter's --collector.interval (default 5s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--scenario", action="append", help="scenario(s) to run (default p4d-idle-fleet and fleet-64)")
    args = parser.parse_args()
    scenarios = args.scenario or ["p4d-idle-fleet", str(FLEET_64)]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yml"
        config.write_text(FLEET_64_CONFIG)
        rows = [
            "| run | requests | p50 ms | p99 ms | max ms | mean ms | notes |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for scenario in scenarios:
            label = Path(scenario).stem if scenario.endswith(".yaml") else scenario
            rows += asyncio.run(bench(scenario, label, args, config))
            print("\n".join(rows[-3:]), flush=True)
    print()
    print(f"collector interval {args.interval}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
