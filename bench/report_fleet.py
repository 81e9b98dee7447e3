"""A synthetic fleet's exporter series as OpenMetrics, for `promtool tsdb create-blocks-from openmetrics`,
with the ground truth the report must find; and a Prometheus or VictoriaMetrics serving it on loopback.

Used by the report tests in tests/unit/report/ and tests/system/ (small fleets) and bench/bench_report.py (1,000 hosts x 8 GPUs x 7 days).
Each device follows the exporter's accounting exactly: per scrape interval `dt` at utilization `u`,
busy += u*dt, the state's seconds += dt, cost += price*dt, idle cost += price*dt while idle,
waste += price*dt*max(0, 0.8-u)/0.8.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

TARGET = 0.8
IDLE_THRESHOLD = 0.01
GIB = 2**30
RULE = "instance:accel_utilization:ratio_rate5m"  # a recording rule of alerts/accel-cost.rules.yml
Utilization = Callable[[int, float], float]  # (device index, unix time) -> 0..1


@dataclass(frozen=True)
class HostSpec:
    """One simulated host; `price` None means unpriced (price_source="none", no money series)."""

    instance: str
    instance_type: str
    team: str
    devices: int
    price: float | None
    utilization: Utilization
    job: str = "accel"
    workload: str = "training"
    instance_id: str = ""
    model: str = "NVIDIA A100-SXM4-40GB"
    memory_gib: float = 10.0  # peak memory in use per device
    memory_total_gib: float = 40.0
    held: frozenset[int] = frozenset()  # devices held by a process (idle_held when idle)
    process_start: dict[int, float] = field(default_factory=dict)  # device -> Unix start time
    scrape: float = 300.0
    gap: tuple[float, float] | None = None  # no samples in [a, b)
    reset_at: float | None = None  # the exporter restarts: counters start again from 0
    rule_utilization: float | None = None  # also write the bundle's instance:accel_utilization:ratio_rate5m


@dataclass
class Truth:
    """Money per host over the report's window, as the exporter accrued it."""

    spend: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    waste: dict[str, float] = field(default_factory=dict)

    def add(self, instance: str, spend: float, idle: float, waste: float) -> None:
        self.spend[instance] = self.spend.get(instance, 0.0) + spend
        self.idle[instance] = self.idle.get(instance, 0.0) + idle
        self.waste[instance] = self.waste.get(instance, 0.0) + waste


def constant(*values: float) -> Utilization:
    """Device i at values[i] (the last value for the rest), all the time."""
    return lambda i, _t: values[min(i, len(values) - 1)]


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _state(host: HostSpec, device: int, u: float) -> str:
    if u > IDLE_THRESHOLD:
        return "active"
    return "idle_held" if device in host.held else "idle_free"


def write_host(
    host: HostSpec, start: float, end: float, window_start: float, out: dict[str, IO[str]], truth: Truth
) -> None:
    """Append one host's samples from `start` to `end` to the per-family files in `out`;
    add its money over (window_start, end] to `truth`."""
    times = []
    t = start
    while t <= end + 1e-6:
        if host.gap is None or not host.gap[0] <= t < host.gap[1]:
            times.append(t)
        t += host.scrape
    base = {"job": host.job, "instance": host.instance}
    info = _labels(
        **base,
        provider="aws",
        instance_type=host.instance_type,
        instance_id=host.instance_id or f"i-{abs(hash(host.instance)) % 16**12:012x}",
        region="us-east-1",
        zone="us-east-1a",
        lifecycle="on-demand",
        price_source="none" if host.price is None else "builtin",
    )
    info_lines = [f"accel_instance_info{info} 1 {ts:.0f}" for ts in times]
    out["accel_instance_info"].write("\n".join(info_lines) + "\n")
    if host.price is not None:
        lines = [f"accel_instance_price_dollars_per_hour{_labels(**base)} {host.price} {ts:.0f}" for ts in times]
        out["accel_instance_price_dollars_per_hour"].write("\n".join(lines) + "\n")
    if host.rule_utilization is not None:
        lines = [f"{RULE}{_labels(**base)} {host.rule_utilization} {ts:.0f}" for ts in times]
        out[RULE].write("\n".join(lines) + "\n")
    for device in range(host.devices):
        _write_device(host, device, times, window_start, out, truth)


def _write_device(
    host: HostSpec, device: int, times: list[float], window_start: float, out: dict[str, IO[str]], truth: Truth
) -> None:
    name = f"nvidia{device}"
    dev = {"job": host.job, "instance": host.instance, "device": name}
    money = {**dev, "team": host.team, "workload": host.workload}
    price = None if host.price is None else host.price / host.devices
    busy = spent = wasted = 0.0
    states = {"active": 0.0, "idle_held": 0.0, "idle_free": 0.0}
    idle_cost = {"idle_held": 0.0, "idle_free": 0.0}
    last_active = times[0] if times else 0.0
    rows: dict[str, list[str]] = {k: [] for k in out}
    previous = times[0] - host.scrape if times else 0.0
    reset_done = False
    for ts in times:
        if host.reset_at is not None and not reset_done and ts >= host.reset_at:
            busy = spent = wasted = 0.0
            states = dict.fromkeys(states, 0.0)
            idle_cost = dict.fromkeys(idle_cost, 0.0)
            reset_done = True
        # A gap: the exporter was down, nothing accrued; otherwise one scrape interval.
        dt = min(ts - previous, host.scrape)
        previous = ts
        u = host.utilization(device, ts)
        state = _state(host, device, u)
        busy += u * dt
        states[state] += dt
        d_spend = d_idle = d_waste = 0.0
        if price is not None:
            d_spend = price * dt / 3600
            d_waste = d_spend * max(0.0, TARGET - u) / TARGET
            d_idle = d_spend if state != "active" else 0.0
            spent += d_spend
            wasted += d_waste
            if state != "active":
                idle_cost[state] += d_idle
        if ts > window_start:
            truth.add(host.instance, d_spend, d_idle, d_waste)
        if state == "active":
            last_active = ts
        stamp = f"{ts:.0f}"
        rows["accel_busy_seconds"].append(f"accel_busy_seconds_total{_labels(**dev)} {busy:.6f} {stamp}")
        for s, v in states.items():
            rows["accel_state_seconds"].append(f"accel_state_seconds_total{_labels(**dev, state=s)} {v:.6f} {stamp}")
        mem = host.memory_gib * GIB
        rows["accel_memory_used_bytes"].append(f"accel_memory_used_bytes{_labels(**dev)} {mem:.0f} {stamp}")
        rows["accel_idle_seconds"].append(f"accel_idle_seconds{_labels(**dev)} {ts - last_active:.0f} {stamp}")
        info = _labels(**dev, model=host.model, kind="gpu", vendor="nvidia")
        rows["accel_device_info"].append(f"accel_device_info{info} 1 {stamp}")
        if device in host.process_start:
            start = host.process_start[device]
            proc = _labels(**dev, pid=str(1000 + device))
            rows["accel_process_start_time_seconds"].append(
                f"accel_process_start_time_seconds{proc} {start:.0f} {stamp}"
            )
        if price is not None:
            rows["accel_price_dollars_per_hour"].append(f"accel_price_dollars_per_hour{_labels(**dev)} {price} {stamp}")
            rows["accel_cost_dollars"].append(f"accel_cost_dollars_total{_labels(**money)} {spent:.9f} {stamp}")
            rows["accel_waste_dollars"].append(f"accel_waste_dollars_total{_labels(**money)} {wasted:.9f} {stamp}")
            for s, v in idle_cost.items():
                series = _labels(**money, state=s)
                rows["accel_idle_cost_dollars"].append(f"accel_idle_cost_dollars_total{series} {v:.9f} {stamp}")
    for family, lines in rows.items():
        if lines:
            out[family].write(_by_series(lines))


def _by_series(lines: list[str]) -> str:
    # OpenMetrics wants each series' samples together: group by the part before the value.
    groups: dict[str, list[str]] = {}
    for line in lines:
        groups.setdefault(line.split("} ", 1)[0], []).append(line)
    return "".join(line + "\n" for group in groups.values() for line in group)


FAMILIES = {
    "accel_busy_seconds": "counter",
    "accel_state_seconds": "counter",
    "accel_cost_dollars": "counter",
    "accel_idle_cost_dollars": "counter",
    "accel_waste_dollars": "counter",
    "accel_memory_used_bytes": "gauge",
    "accel_idle_seconds": "gauge",
    "accel_device_info": "gauge",
    "accel_price_dollars_per_hour": "gauge",
    "accel_process_start_time_seconds": "gauge",
    "accel_instance_info": "gauge",
    "accel_instance_price_dollars_per_hour": "gauge",
    "instance:accel_utilization:ratio_rate5m": "gauge",
}


def write_openmetrics(hosts: list[HostSpec], start: float, end: float, window_start: float, path: Path) -> Truth:
    """Write every host's series to `path` (one OpenMetrics file) and return the ground truth."""
    truth = Truth()
    parts = {family: path.with_suffix(f".{family}.part") for family in FAMILIES}
    files = {family: p.open("w") for family, p in parts.items()}
    try:
        for host in hosts:
            write_host(host, start, end, window_start, files, truth)
    finally:
        for f in files.values():
            f.close()
    with path.open("w") as out:
        for family, kind in FAMILIES.items():
            out.write(f"# TYPE {family} {kind}\n")
            with parts[family].open() as part:
                shutil.copyfileobj(part, out)
            parts[family].unlink()
        out.write("# EOF\n")
    return truth


def create_blocks(openmetrics: Path, tsdb: Path) -> None:
    """Backfill `tsdb` from the OpenMetrics file with promtool."""
    subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=24h",
            str(openmetrics),
            str(tsdb),
        ],
        check=True,
        capture_output=True,
    )


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


@contextmanager
def _serve(argv: list[str], ready_url: str, log: Path, timeout: float) -> Iterator[None]:
    """Run a server until the block ends, once `ready_url` answers 200; stopped with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(ready_url, proc, timeout)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def prometheus(tsdb: Path, port: int, log: Path, timeout: float = 120.0) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1:`port` serving `tsdb`; yields its URL."""
    config = tsdb.parent / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n")
    url = f"http://127.0.0.1:{port}"
    argv = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tsdb}",
        "--storage.tsdb.retention.time=100y",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with _serve(argv, url + "/-/ready", log, timeout):
        yield url


@contextmanager
def victoria_metrics(data: Path, port: int, log: Path, timeout: float = 60.0) -> Iterator[str]:
    """A single-node VictoriaMetrics on 127.0.0.1:`port`; yields its URL (load it with import_openmetrics)."""
    url = f"http://127.0.0.1:{port}"
    argv = [
        "victoria-metrics",
        f"-storageDataPath={data}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=100y",
        "-search.disableCache",
        "-search.latencyOffset=0s",
    ]
    with _serve(argv, url + "/health", log, timeout):
        yield url


def import_openmetrics(url: str, openmetrics: Path) -> None:
    """Load the OpenMetrics file into VictoriaMetrics (Prometheus text import with timestamps in ms)."""
    lines = []
    with openmetrics.open() as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            series, value, stamp = line.rsplit(" ", 2)
            lines.append(f"{series} {value} {int(stamp) * 1000}\n")
            if len(lines) >= 200_000:
                _post(url + "/api/v1/import/prometheus", "".join(lines).encode())
                lines = []
    if lines:
        _post(url + "/api/v1/import/prometheus", "".join(lines).encode())
    with urllib.request.urlopen(url + "/internal/force_flush", timeout=60):
        pass


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST")
    with urllib.request.urlopen(request, timeout=300):
        pass


def hour_floor(t: float) -> float:
    """`t` rounded down to a whole hour."""
    return math.floor(t / 3600) * 3600
