"""Cost of the `/` landing page on the synthetic 64-GPU host, next to `/metrics`.

    .venv/bin/python bench/bench_landing.py [--requests 300]

The page is rendered at most once per snapshot and served from cache like the metrics bytes;
this prints the median and p95 latency of GET / and GET /metrics over loopback, the exporter's
CPU per request, the page size, and the time one render of the 64-GPU page takes in process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import FLEET_64, FLEET_64_CONFIG, cpu_seconds, start_demo_exporter  # noqa: E402


def timed_gets(url: str, count: int) -> tuple[list[float], int]:
    """Latencies in ms of `count` GETs of `url`, and the size of the last body."""
    latencies, size = [], 0
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            size = len(response.read())
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies, size


def render_once_ms() -> float:
    """One in-process render of a 64-GPU page (uncached), with the tests' snapshot builders."""
    sys.path.insert(0, str(ROOT / "tests"))  # test_web_landing imports conftest as the tests do
    from test_web_landing import device, snapshot

    from exporter.web.landing import LandingSettings, render_landing

    snap = snapshot(*(device(f"nvidia{i}") for i in range(64)))
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        render_landing(snap, LandingSettings())
    return (time.perf_counter() - start) / runs * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(FLEET_64_CONFIG)
        proc, port = start_demo_exporter(FLEET_64, "5s", ["--config.file", str(config)])
        try:
            base = f"http://127.0.0.1:{port}"
            for path in ("/", "/metrics"):
                timed_gets(base + path, 5)  # warm: the first request of a snapshot renders it
                cpu = cpu_seconds(proc.pid)
                latencies, size = timed_gets(base + path, args.requests)
                cpu_ms = (cpu_seconds(proc.pid) - cpu) / args.requests * 1000
                p95 = statistics.quantiles(latencies, n=20)[-1]
                print(
                    f"GET {path:<8} median {statistics.median(latencies):.2f} ms, p95 {p95:.2f} ms, "
                    f"exporter CPU {cpu_ms:.2f} ms/request, {size} bytes"
                )
        finally:
            proc.terminate()
            proc.wait()
    print(f"one render of a 64-GPU page in process: {render_once_ms():.2f} ms")


if __name__ == "__main__":
    main()
