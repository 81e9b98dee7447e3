"""Signals and restarts, on the real exporter process: SIGTERM mid-scrape, SIGHUP with a broken
configuration, and no neuron-monitor child left behind."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ExporterProcess, bench_module, exporter_env, pick_free_port
from conftest import process_gone as gone

soak: Any = bench_module("soak")
FLEET_64 = ROOT / "bench" / "scenarios" / "fleet-64.yaml"

# Starts the exporter with a 4 KiB kernel send buffer on every accepted connection, the way a
# slow network path looks to it: a 100 kB scrape then stays in flight until the client reads it,
# instead of vanishing into the multi-megabyte loopback buffers at once.
SMALL_BUFFERS = """
import socket
import sys

_accept = socket.socket.accept


def _accept_with_small_send_buffer(self):
    conn, addr = _accept(self)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return conn, addr


socket.socket.accept = _accept_with_small_send_buffer
from exporter.cli import main

sys.exit(main())
"""


@pytest.fixture
def slow_path_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        shim = tmp_path / "small_buffers.py"
        shim.write_text(SMALL_BUFFERS)
        port = pick_free_port()
        log_path = tmp_path / f"exporter-{len(started)}.log"
        with log_path.open("wb") as log:
            argv = [sys.executable, str(shim), "--web.listen-address", f"127.0.0.1:{port}", *args]
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=exporter_env())
        exporter = ExporterProcess(proc, port, log_path, tuple(args))
        started.append(exporter)
        exporter.wait_ready()
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


def slow_client(port: int) -> socket.socket:
    """A connection with a 4 KiB receive buffer that has asked for the plain-text exposition."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(10)
    client.connect(("127.0.0.1", port))
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    return client


def read_all(client: socket.socket, pause: float = 0.0) -> bytes:
    data = b""
    while chunk := client.recv(4096):
        data += chunk
        time.sleep(pause)
    return data


def test_sigterm_during_a_scrape_completes_it_and_exits_0(slow_path_exporter: Any) -> None:
    exporter = slow_path_exporter("--demo", str(FLEET_64), "--collector.interval", "1s")
    client = slow_client(exporter.port)
    first = client.recv(4096)  # blocks until the exporter is writing the scrape
    assert first.startswith(b"HTTP/1.1 200")
    exporter.signal(signal.SIGTERM)
    time.sleep(0.4)
    # The scrape is still being written: the exporter waits for it instead of exiting.
    assert exporter.proc.poll() is None
    data = first + read_all(client, pause=0.001)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split()[1])
    assert length > 64 * 1024
    assert len(body) == length, f"got {len(body)} of {length} bytes"
    samples = soak.parse_exposition(body.decode())
    assert len(samples["accel_device_info"]) == 64
    assert exporter.proc.wait(10) == 0
    assert "shutting down" in exporter.log()


def test_a_stalled_scraper_does_not_hold_up_shutdown(slow_path_exporter: Any) -> None:
    exporter = slow_path_exporter("--demo", str(FLEET_64), "--collector.interval", "1s")
    client = slow_client(exporter.port)  # never reads
    client.recv(1, socket.MSG_PEEK)  # the exporter is writing the scrape (peeking leaves it unread)
    started = time.monotonic()
    exporter.signal(signal.SIGTERM)
    assert exporter.proc.wait(10) == 0
    # Bounded by the grace periods (aiohttp: 1.5 s for the handler, 1.5 s after cancelling it), not by the client.
    assert time.monotonic() - started < 5.0
    client.close()


def test_sighup_with_a_broken_or_deleted_config_keeps_the_old_one(tmp_path: Path, run_exporter: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: 30.0}\n")
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--config.file", str(config), "--collector.interval", "200ms"])

    def scrape() -> Any:
        return soak.parse_exposition(exporter.metrics())

    def wait_for(condition: Callable[[Any], bool]) -> Any:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            samples = scrape()
            if condition(samples):
                return samples
            time.sleep(0.05)
        pytest.fail(f"condition not met; log:\n{exporter.log()}")

    def refused(samples: Any) -> float:
        return float(soak.total(samples, "accel_exporter_errors_total", collector="config", reason="reload_invalid"))

    def price(samples: Any) -> float:
        return float(soak.total(samples, "accel_instance_price_dollars_per_hour"))

    samples = wait_for(lambda s: price(s) == 30.0)
    assert soak.values(samples, "accel_instance_info", "price_source") == {"config": 1.0}
    watch = soak.CounterWatch()
    broken = [
        ("pricing:\n  instance_types: {p4d.24xlarge: 30.0\n", "not valid YAML"),  # corrupted mid-write
        ("pricing:\n  instance_types: {p4d.24xlarge: -5}\n", "pricing.instance_types"),  # valid YAML, bad value
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (None, "file not found"),  # deleted
    ]
    for count, (content, message) in enumerate(broken, start=1):
        if content is None:
            config.unlink()
        elif isinstance(content, bytes):
            config.write_bytes(content)
        else:
            config.write_text(content)
        exporter.signal(signal.SIGHUP)
        samples = wait_for(lambda s, n=count: refused(s) == n)
        watch.observe(samples)
        assert price(samples) == 30.0  # the old configuration stays in force
        assert exporter.proc.poll() is None
        assert message in exporter.log()
    assert exporter.log().count("configuration reload refused") == len(broken)
    # A good file is taken: the reload path works, so the refusals above were real refusals.
    config.write_text("pricing:\n  instance_types: {p4d.24xlarge: 40.0}\n")
    exporter.signal(signal.SIGHUP)
    samples = wait_for(lambda s: price(s) == 40.0)
    watch.observe(samples)
    assert refused(samples) == len(broken)
    assert watch.problems == []
    assert exporter.stop() == 0


NEURON_CHILDREN = (b"exporter.sim.neuron_monitor", b"exporter.sources.neuron_parser_child")


def neuron_children(parent: int) -> list[int]:
    """Pids whose parent is `parent` and whose command line is the simulated neuron-monitor or the line parser."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")), 0)
        if ppid == parent and any(name in cmdline for name in NEURON_CHILDREN):
            found.append(int(entry.name))
    return found


def wait_for_children(exporter: ExporterProcess) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = neuron_children(exporter.proc.pid)
        if len(children) == len(NEURON_CHILDREN):  # the parser starts with the first line
            return children
        time.sleep(0.05)
    pytest.fail(f"no neuron-monitor and parser child; log:\n{exporter.log()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_neuron_monitor_child_is_gone_after_exit(run_exporter: Any, sig: int) -> None:
    exporter = run_exporter(["--demo", "inf2-inference", "--collector.interval", "500ms"])
    children = wait_for_children(exporter)
    exporter.signal(sig)
    assert exporter.proc.wait(10) == 0
    for pid in children:
        assert gone(pid), f"neuron child {pid} survived the exporter"
    assert neuron_children(exporter.proc.pid) == []


def test_neuron_monitor_child_exits_when_the_exporter_is_killed(tmp_path: Path, run_exporter: Any) -> None:
    # SIGKILL leaves no chance to clean up: the child must notice its reader is gone (EPIPE).
    config = tmp_path / "config.yaml"
    config.write_text("neuron: {period: 1s}\n")
    exporter = run_exporter(["--demo", "inf2-inference", "--config.file", str(config)])
    children = wait_for_children(exporter)
    exporter.proc.kill()
    exporter.proc.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(gone(pid) for pid in children):
        time.sleep(0.05)
    assert all(gone(pid) for pid in children), "neuron-monitor or the parser child outlived a killed exporter"
