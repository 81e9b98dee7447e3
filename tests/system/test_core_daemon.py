"""The daemon as a real process: SIGTERM/SIGINT stop it cleanly, SIGHUP reloads its configuration
(a bad file is refused and the old one kept), and it does not start on a busy port."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, ExporterProcess, exporter_env

PRICE = re.compile(r"^accel_instance_price_dollars_per_hour (\S+)$", re.M)


def instance_price(text: str) -> float:
    match = PRICE.search(text)
    assert match, text[:500]
    return float(match.group(1))


def value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def write_config(path: Path, price: float, idle_threshold: float = 0.01, extra: str = "") -> None:
    path.write_text(
        f"accounting:\n  idle_threshold: {idle_threshold}\npricing:\n  instance_types:\n    p4d.24xlarge: {price}\n"
        + extra
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_within_two_seconds(run_exporter: Callable[..., ExporterProcess], sig: int) -> None:
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--collector.interval", "1s"])
    # An idle keep-alive connection must not hold the shutdown up.
    idle = socket.create_connection(("127.0.0.1", exporter.port))
    idle.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.recv(1024)
    try:
        started = time.monotonic()
        exporter.signal(sig)
        code = exporter.proc.wait(5)
        elapsed = time.monotonic() - started
    finally:
        idle.close()
    assert code == 0, exporter.log()
    assert elapsed < 2.0, elapsed
    log = exporter.log()
    assert "shutting down" in log
    assert "Traceback" not in log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", exporter.port), timeout=1).close()


def test_sighup_reloads_and_refuses_a_bad_file(run_exporter: Callable[..., ExporterProcess], tmp_path: Path) -> None:
    config = tmp_path / "exporter.yml"
    write_config(config, 20.0)
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--collector.interval", "1s", "--config.file", str(config)])
    text = exporter.metrics()
    assert instance_price(text) == 20.0
    assert 'price_source="config"' in text
    assert value(text, 'accel_price_dollars_per_hour{device="nvidia0"}') == pytest.approx(2.5)
    wait_for(lambda: value(exporter.metrics(), 'accel_state{device="nvidia4",state="active"}') == 1.0, what="a poll")

    # A good new file: new price, and the 10 % bursty GPU becomes idle under a 20 % threshold.
    write_config(config, 30.0, idle_threshold=0.2)
    exporter.signal(signal.SIGHUP)
    wait_for(lambda: instance_price(exporter.metrics()) == 30.0, what="the new price")
    wait_for(
        lambda: value(exporter.metrics(), 'accel_state{device="nvidia4",state="idle_held"}') == 1.0,
        what="the new idle threshold",
    )
    assert value(exporter.metrics(), 'accel_price_dollars_per_hour{device="nvidia0"}') == pytest.approx(3.75)
    assert "configuration reloaded" in exporter.log()

    # A bad new file: refused, the old configuration keeps running.
    config.write_text("accounting:\n  idle_threshold: 7\n")
    exporter.signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in exporter.log(), what="the refusal in the log")
    polled_at = value(exporter.metrics(), 'accel_exporter_last_sample_timestamp_seconds{collector="nvml"}') or 0.0
    wait_for(  # at least one more poll under the old configuration
        lambda: (
            (value(exporter.metrics(), 'accel_exporter_last_sample_timestamp_seconds{collector="nvml"}') or 0.0)
            > polled_at
        ),
        timeout=30,
        what="one more poll after the refused reload",
    )
    assert exporter.proc.poll() is None
    assert exporter.get("/-/healthy").status == 200
    text = exporter.metrics()
    assert instance_price(text) == 30.0
    assert value(text, 'accel_state{device="nvidia4",state="idle_held"}') == 1.0
    assert value(text, 'accel_exporter_errors_total{collector="config",reason="reload_invalid"}') == 1.0
    refusal = next(line for line in exporter.log().splitlines() if "reload refused" in line)
    assert "accounting.idle_threshold" in refusal
    assert "Traceback" not in exporter.log()


def test_counters_survive_a_reload(run_exporter: Callable[..., ExporterProcess], tmp_path: Path) -> None:
    config = tmp_path / "exporter.yml"
    write_config(config, 20.0)
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--collector.interval", "1s", "--config.file", str(config)])
    series = 'accel_state_seconds_total{device="nvidia0",state="idle_free"}'
    wait_for(lambda: (value(exporter.metrics(), series) or 0.0) >= 1.0, what="some idle seconds")
    before = value(exporter.metrics(), series)
    # Sections built once at start are named in the log; the rest of the file applies at once.
    write_config(config, 25.0, extra="neuron:\n  period: 2s\nkubernetes:\n  refresh_interval: 60s\n")
    exporter.signal(signal.SIGHUP)
    wait_for(lambda: instance_price(exporter.metrics()) == 25.0, what="the new price")
    after = value(exporter.metrics(), series)
    assert before is not None and after is not None and after >= before
    warning = "neuron and kubernetes changed and take effect at the next restart"
    assert warning in exporter.log()
    exporter.signal(signal.SIGHUP)  # still true on the next reload: the running settings are the old ones
    wait_for(lambda: exporter.log().count(warning) == 2, what="the warning again")


def test_busy_port_exits_with_a_clear_message(free_port: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "--demo", "--web.listen-address", f"127.0.0.1:{free_port}"],
            cwd=ROOT,
            env=exporter_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr
