"""Scale benchmark of `accel-cost-exporter report` (issue 12): a TSDB backfilled with
`promtool tsdb create-blocks-from openmetrics` holding HOSTS x GPUS x DAYS at INTERVAL, served by
a real Prometheus (and, with --victoria-metrics, a single-node VictoriaMetrics); prints the
report's wall time, the peak RSS of the report process and the number of queries.

    python bench/bench_report.py [--hosts 1000] [--gpus 8] [--days 7] [--interval 60] [--victoria-metrics]

The target (docs/benchmarks.md): 1,000 hosts x 8 GPUs x 7 days at 60 s, under 60 s and 300 MB.
Each device carries the exporter's series the report reads: busy seconds, seconds per state (3),
cost, idle cost (2 states), waste, memory used, idle seconds, price, device info; each host its
instance info and price. Utilizations are a fleet-like mix (a third idle, a third around 20 %,
a third busy), constant per device, so the series compress as real, slowly changing ones do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report_fleet as fleet

PRICE = 21.957642  # p4d.24xlarge, 8 x A100


def _series(out: IO[str], name: str, labels: str, values: list[str], stamps: list[str]) -> None:
    out.write("".join(f"{name}{{{labels}}} {v} {t}\n" for v, t in zip(values, stamps, strict=True)))


def _linear(rate: float, steps: int, dt: float) -> list[str]:
    return [f"{rate * k * dt:.6f}" for k in range(1, steps + 1)]


class VictoriaMetricsSink:
    """A text sink that posts what it is given to VictoriaMetrics' Prometheus-text import in
    chunks, so a fleet too large for the disk streams straight into the server (stamps in ms)."""

    def __init__(self, url: str, chunk: int = 32 * 2**20) -> None:
        self.url, self.chunk = url, chunk
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            fleet._post(self.url + "/api/v1/import/prometheus", "".join(self.parts).encode())
        self.parts, self.size = [], 0

    def __enter__(self) -> VictoriaMetricsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def write_fleet(
    path: Path | VictoriaMetricsSink, hosts: int, gpus: int, days: float, interval: float, end: float
) -> float:
    """Write the fleet, family by family, to a file (or a VictoriaMetricsSink, with ms stamps);
    returns the expected spend over the window."""
    steps = int(days * 86400 / interval)
    scale = 1000 if isinstance(path, VictoriaMetricsSink) else 1
    stamps = [f"{(end - (steps - k) * interval) * scale:.0f}" for k in range(1, steps + 1)]
    ones = ["1"] * steps
    per_device = PRICE / gpus / 3600
    util = [0.0 if h % 3 == 0 else 0.2 if h % 3 == 1 else 0.9 for h in range(hosts)]
    with path if isinstance(path, VictoriaMetricsSink) else path.open("w") as out:

        def each_device(write: callable) -> None:  # type: ignore[valid-type]
            for h in range(hosts):
                for d in range(gpus):
                    write(h, d, f'job="accel",instance="host-{h:04d}:11094",device="nvidia{d}"')

        out.write("# TYPE accel_busy_seconds counter\n")
        each_device(
            lambda h, d, lab: _series(out, "accel_busy_seconds_total", lab, _linear(util[h], steps, interval), stamps)
        )
        out.write("# TYPE accel_state_seconds counter\n")

        def states(h: int, d: int, lab: str) -> None:
            active = util[h] > 0.01
            for state in ("active", "idle_held", "idle_free"):
                on = (state == "active") == active and (state != "idle_held")
                _series(
                    out,
                    "accel_state_seconds_total",
                    f'{lab},state="{state}"',
                    _linear(1.0 if on else 0.0, steps, interval),
                    stamps,
                )

        each_device(states)
        team = lambda h: f'team="team-{h % 20:02d}",workload="training"'  # noqa: E731
        out.write("# TYPE accel_cost_dollars counter\n")
        each_device(
            lambda h, d, lab: _series(
                out, "accel_cost_dollars_total", f"{lab},{team(h)}", _linear(per_device, steps, interval), stamps
            )
        )
        out.write("# TYPE accel_idle_cost_dollars counter\n")

        def idle(h: int, d: int, lab: str) -> None:
            for state in ("idle_held", "idle_free"):
                rate = per_device if state == "idle_free" and util[h] <= 0.01 else 0.0
                _series(
                    out,
                    "accel_idle_cost_dollars_total",
                    f'{lab},{team(h)},state="{state}"',
                    _linear(rate, steps, interval),
                    stamps,
                )

        each_device(idle)
        out.write("# TYPE accel_waste_dollars counter\n")
        each_device(
            lambda h, d, lab: _series(
                out,
                "accel_waste_dollars_total",
                f"{lab},{team(h)}",
                _linear(per_device * max(0.0, 0.8 - util[h]) / 0.8, steps, interval),
                stamps,
            )
        )
        gauges = (
            ("accel_memory_used_bytes", lambda h: [str(20 * 2**30)] * steps),
            (
                "accel_idle_seconds",
                lambda h: ["0"] * steps if util[h] > 0.01 else [f"{k * interval:.0f}" for k in range(1, steps + 1)],
            ),
            ("accel_price_dollars_per_hour", lambda h: [f"{PRICE / gpus}"] * steps),
        )
        for name, values in gauges:
            out.write(f"# TYPE {name} gauge\n")
            each_device(lambda h, d, lab, name=name, values=values: _series(out, name, lab, values(h), stamps))
        out.write("# TYPE accel_device_info gauge\n")
        each_device(
            lambda h, d, lab: _series(out, "accel_device_info", f'{lab},model="NVIDIA A100-SXM4-40GB"', ones, stamps)
        )
        out.write("# TYPE accel_instance_info gauge\n")
        for h in range(hosts):
            labels = f'job="accel",instance="host-{h:04d}:11094",instance_type="p4d.24xlarge",instance_id="i-{h:017x}",price_source="builtin"'
            _series(out, "accel_instance_info", labels, ones, stamps)
        out.write("# TYPE accel_instance_price_dollars_per_hour gauge\n")
        for h in range(hosts):
            _series(
                out,
                "accel_instance_price_dollars_per_hour",
                f'job="accel",instance="host-{h:04d}:11094"',
                [str(PRICE)] * steps,
                stamps,
            )
        out.write("# EOF\n")
    return PRICE * hosts * days * 24


def run_report(url: str, days: float, end: float) -> dict[str, float]:
    """Run the report as a child process under GNU time: wall time, its own peak RSS, its query count.

    GNU time (a small process) starts the report, so the peak RSS is the report's alone, not a copy
    of this script's memory inherited through fork."""
    argv = ["/usr/bin/time", "-f", "maxrss_kb=%M", sys.executable, "-m", "exporter", "report"]
    argv += ["--prometheus.url", url, "--range", f"{days:g}d", "--end", f"{end:.0f}", "--format", "json", "--quiet"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"report failed ({result.returncode}): {result.stderr}")
    rss_kb = int(result.stderr.strip().splitlines()[-1].split("=", 1)[1])
    report = json.loads(result.stdout)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "queries": report["source"]["queries"],
        "hosts": len(report["hosts"]),
        "spend": round(report["totals"]["spend_dollars"], 2),
        "findings": len(report["findings"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--interval", type=float, default=60)
    parser.add_argument("--victoria-metrics", action="store_true", help="also load and query VictoriaMetrics")
    parser.add_argument(
        "--stream-victoria-metrics",
        action="store_true",
        help="only VictoriaMetrics, fed straight from the generator (no file: for fleets larger than the disk)",
    )
    parser.add_argument("--no-prometheus", action="store_true", help="skip the backfill and Prometheus")
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    end = fleet.hour_floor(time.time()) - 3600
    if args.stream_victoria_metrics:
        stream(args, work, end)
        return
    openmetrics = work / "fleet.om"
    t0 = time.monotonic()
    expected = write_fleet(openmetrics, args.hosts, args.gpus, args.days, args.interval, end)
    size = openmetrics.stat().st_size
    print(
        f"fleet: {args.hosts} hosts x {args.gpus} GPUs x {args.days:g} d at {args.interval:g} s; "
        f"OpenMetrics {size / 2**30:.1f} GiB written in {time.monotonic() - t0:.0f} s",
        flush=True,
    )
    if not args.no_prometheus:
        t0 = time.monotonic()
        fleet.create_blocks(openmetrics, work / "tsdb")
        print(f"promtool create-blocks: {time.monotonic() - t0:.0f} s", flush=True)
        with fleet.prometheus(work / "tsdb", fleet_port(), work / "prometheus.log", timeout=600) as url:
            result = run_report(url, args.days, end)
            print(f"Prometheus: {json.dumps(result)} (expected spend {expected:.2f})", flush=True)
    if args.victoria_metrics:
        with fleet.victoria_metrics(work / "vm", fleet_port(), work / "vm.log") as url:
            t0 = time.monotonic()
            fleet.import_openmetrics(url, openmetrics)
            print(f"VictoriaMetrics import: {time.monotonic() - t0:.0f} s", flush=True)
            result = run_report(url, args.days, end)
            print(f"VictoriaMetrics: {json.dumps(result)} (expected spend {expected:.2f})", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def stream(args: argparse.Namespace, work: Path, end: float) -> None:
    """Generate the fleet straight into VictoriaMetrics, then run the report against it."""
    with fleet.victoria_metrics(work / "vm", fleet_port(), work / "vm.log") as url:
        t0 = time.monotonic()
        with VictoriaMetricsSink(url) as sink:
            expected = write_fleet(sink, args.hosts, args.gpus, args.days, args.interval, end)
        with urllib.request.urlopen(url + "/internal/force_flush", timeout=600):
            pass
        print(f"VictoriaMetrics: generated and imported in {time.monotonic() - t0:.0f} s", flush=True)
        result = run_report(url, args.days, end)
        print(f"VictoriaMetrics: {json.dumps(result)} (expected spend {expected:.2f})", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def fleet_port() -> int:
    """A free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
