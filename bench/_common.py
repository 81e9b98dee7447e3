"""What the benchmark scripts share: a loopback port, a process's CPU time, Prometheus' scrape headers,
the synthetic 64-GPU scenario, the exporter from this checkout as a child process, a minimal
keep-alive scrape client and a percentile.

Scripts import it as `bench._common`, with the checkout on sys.path (as they have it for `exporter`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEET_64 = ROOT / "bench" / "scenarios" / "fleet-64.yaml"
# fleet-64's made-up instance type gets a price, so the cost series are part of every scrape.
FLEET_64_CONFIG = "pricing:\n  instance_types:\n    bench.64gpu: 262.4\n"
# The header lines Prometheus sends with a scrape (OpenMetrics preferred, gzip), for raw HTTP/1.1 requests.
PROMETHEUS_HEADERS = (
    "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n"
    "Accept-Encoding: gzip\r\n"
    "X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid: int) -> float:
    """On-CPU time of a process's live threads, in ns resolution (the first field of each thread's schedstat).

    /proc/<pid>/stat counts in 10 ms clock ticks, too coarse for a process that uses a few ms a
    second; this misses only threads that have already exited.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the thread ended between the listing and the read
    return total / 1e9


def neuron_parser_child(pid: int) -> int | None:
    """The exporter's Neuron parser child process, if it runs one (code from before it had none)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                if b"neuron_parser_child" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except OSError:
                continue
    return None


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of a process in KiB, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def start_demo_exporter(
    scenario: str | Path,
    interval: str,
    extra_args: Sequence[str] = (),
    ready_within: float = 30.0,
    root: Path = ROOT,
) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m exporter --demo <scenario>` on a free loopback port, returned once /-/ready answers 200.

    The exporter's code comes from `root` (this checkout unless another is named, e.g. an older
    commit to compare with). No ACCEL_* setting leaks in from the caller's environment. Exits with
    a message (after killing the process) if it is not ready within `ready_within` seconds.
    """
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "--demo", str(scenario), "--collector.interval", interval]
    argv += ["--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn", *extra_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
    env["PYTHONPATH"] = str(root)
    proc = subprocess.Popen(argv, cwd=root, env=env)
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise SystemExit(f"the exporter for {scenario} did not become ready in {ready_within:g} s")


class Connection:
    """One keep-alive HTTP/1.1 connection; `get` returns the body size."""

    def __init__(self, port: int, path: str = "/metrics") -> None:
        self.port = port
        self.request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{PROMETHEUS_HEADERS}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"HTTP {status.decode()}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        return length

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def pct(values: list[float], q: float) -> float:
    """The q-th percentile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
