"""Scrape storm: many concurrent scrapers against the real exporter process on a 64-GPU fleet.

Each scraper is a closed loop on its own keep-alive connection (the next request as soon as the
last answer is in), sending Prometheus' own headers (OpenMetrics preferred, gzip). A separate
watcher reads `accel_exporter_last_sample_timestamp_seconds{collector="nvml"}` ten times per poll
interval and records when each new poll landed, to show the poll loop is never starved by the
scrapes: a poll delayed by more than one interval shows as a gap over two intervals.

    python bench/storm.py                          # 200 scrapers for 60 s, 1 s poll interval
    python bench/storm.py --scrapers 50 --seconds 5

The test suite (tests/system/test_reliability_storm.py) runs a short version of the same `storm()`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/storm.py` from a checkout, for bench._common

from bench._common import FLEET_64, FLEET_64_CONFIG, PROMETHEUS_HEADERS, cpu_seconds, start_demo_exporter  # noqa: E402

WATCHED = 'accel_exporter_last_sample_timestamp_seconds{collector="nvml"}'


@dataclass
class StormResult:
    """What one storm measured; latencies in seconds."""

    scrapers: int
    seconds: float
    interval: float
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    poll_times: list[float] = field(default_factory=list)  # exporter timestamps of the polls seen
    exporter_cpu_seconds: float | None = None

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the request latencies, nearest rank."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]

    @property
    def poll_gaps(self) -> list[float]:
        """Seconds between successive polls the watcher saw."""
        return [b - a for a, b in zip(self.poll_times, self.poll_times[1:], strict=False)]

    def summary(self) -> dict[str, object]:
        """The figures docs/reliability.md reports."""
        gaps = self.poll_gaps
        return {
            "scrapers": self.scrapers,
            "seconds": self.seconds,
            "poll_interval_s": self.interval,
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.seconds, 1),
            "errors": len(self.errors),
            "latency_ms": {
                "p50": round(1000 * self.percentile(50), 1),
                "p90": round(1000 * self.percentile(90), 1),
                "p99": round(1000 * self.percentile(99), 1),
                "max": round(1000 * max(self.latencies, default=float("nan")), 1),
                "mean": round(1000 * statistics.fmean(self.latencies), 1) if self.latencies else None,
            },
            "polls_seen": len(self.poll_times),
            "poll_gap_s": {"max": round(max(gaps), 3), "mean": round(statistics.fmean(gaps), 3)} if gaps else None,
            "exporter_cpu_s": None if self.exporter_cpu_seconds is None else round(self.exporter_cpu_seconds, 1),
        }


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a keep-alive connection: (status, body), the body read to its Content-Length."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), None)
    if length is None:
        raise ValueError("no Content-Length in the answer")
    body = await reader.readexactly(length)
    if any(line.lower() == "content-encoding: gzip" for line in lines):
        body = gzip.decompress(body)  # a truncated or corrupt body raises here
    return status, body


async def _scraper(host: str, port: int, path: str, until: float, result: StormResult) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{PROMETHEUS_HEADERS}\r\n".encode()
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while loop.time() < until:
        started = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection(host, port)
            status, body = await _exchange(*connection, request)
            if status != 200 or not body.endswith(b"# EOF\n"):
                result.errors.append(f"HTTP {status}, {len(body)} bytes")
            else:
                result.latencies.append(time.perf_counter() - started)
            result.requests += 1
        except (OSError, ValueError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            if connection is not None:
                connection[1].close()
            connection = None
            await asyncio.sleep(0.05)
    if connection is not None:
        connection[1].close()


async def _watcher(host: str, port: int, path: str, until: float, interval: float, result: StormResult) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: gzip\r\n\r\n".encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while loop.time() < until:
            _, body = await _exchange(reader, writer, request)
            for line in body.decode().splitlines():
                if line.startswith(WATCHED):
                    stamp = float(line.rsplit(" ", 1)[1])
                    if not result.poll_times or stamp != result.poll_times[-1]:
                        result.poll_times.append(stamp)
            await asyncio.sleep(interval / 10)
    finally:
        writer.close()


async def storm(
    port: int,
    *,
    scrapers: int,
    seconds: float,
    interval: float,
    host: str = "127.0.0.1",
    path: str = "/metrics",
    pid: int | None = None,
) -> StormResult:
    """Run `scrapers` closed-loop scrapers for `seconds` against host:port, with the poll watcher."""
    result = StormResult(scrapers=scrapers, seconds=seconds, interval=interval)
    cpu_before = cpu_seconds(pid) if pid else None
    until = asyncio.get_running_loop().time() + seconds
    tasks = [asyncio.create_task(_scraper(host, port, path, until, result)) for _ in range(scrapers)]
    tasks.append(asyncio.create_task(_watcher(host, port, path, until, interval, result)))
    await asyncio.gather(*tasks)
    if pid and cpu_before is not None:
        result.exporter_cpu_seconds = cpu_seconds(pid) - cpu_before
    return result


def main() -> int:
    """Start the exporter on fleet-64, run the storm, print the figures; exit 1 on any error or starved poll."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scrapers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0, help="the exporter's poll interval in seconds")
    parser.add_argument("--scenario", type=Path, default=FLEET_64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(FLEET_64_CONFIG)
        proc, port = start_demo_exporter(args.scenario, f"{args.interval}s", ["--config.file", str(config)])
        try:
            result = asyncio.run(
                storm(port, scrapers=args.scrapers, seconds=args.seconds, interval=args.interval, pid=proc.pid)
            )
        finally:
            proc.terminate()
            status = proc.wait(15)
    summary = result.summary()
    summary["exporter_exit_status"] = status
    print(json.dumps(summary, indent=1))
    for error in result.errors[:10]:
        print("error:", error, file=sys.stderr)
    starved = any(gap > 2 * args.interval for gap in result.poll_gaps)
    return 1 if result.errors or starved or status != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
