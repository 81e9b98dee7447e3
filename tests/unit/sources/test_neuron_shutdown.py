"""Shutting the real exporter down while its neuron-monitor is stuck: prompt, clean, as documented."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, wait_until
from test_neuron_source import reaped

from exporter.sources.neuron import DEFAULT_STOP_TIMEOUT_SECONDS


def test_sigterm_with_a_stuck_monitor_exits_zero_promptly_without_a_traceback(
    tmp_path: Path, run_exporter: Any
) -> None:
    pid_file = tmp_path / "monitor.pid"
    stuck = tmp_path / "neuron-monitor"
    # Ignores SIGTERM and never writes a line: only SIGKILL ends it (sleep inherits the ignored signal).
    stuck.write_text(f"#!/bin/sh\ntrap '' TERM\necho $$ > {pid_file}\nexec sleep 600\n", encoding="utf-8")
    stuck.chmod(0o755)
    # No cloud metadata or price lookups: their worker threads would make the exit time depend on the network.
    config = tmp_path / "config.yaml"
    config.write_text(
        "host: {provider: static, instance_type: inf2.xlarge}\nmetadata: {providers: []}\npricing: {aws: {enabled: false}}\n",
        encoding="utf-8",
    )
    exporter = run_exporter(
        [
            "--collector.neuron",
            "--no-collector.nvml",
            "--neuron.monitor-path",
            str(stuck),
            "--collector.interval",
            "200ms",
        ]
    )
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), "the monitor to start", 20.0)
    monitor = int(pid_file.read_text())
    started = time.monotonic()
    exporter.signal(signal.SIGTERM)
    status = exporter.proc.wait(30)
    elapsed = time.monotonic() - started
    log = exporter.log()
    assert status == 0, log
    assert "Traceback" not in log and "Event loop is closed" not in log, log
    # SIGTERM, the documented wait, SIGKILL: all inside the daemon's grace for stopping a source.
    assert f"ignored SIGTERM for {DEFAULT_STOP_TIMEOUT_SECONDS:.1f}s; killing it" in log, log
    assert "gave up" not in log, log
    assert elapsed < 5.0, f"SIGTERM took {elapsed:.1f}s"
    wait_until(lambda: reaped(monitor), "the stuck monitor to be reaped", timeout=5.0)


def test_the_docs_state_the_stop_timeout_the_code_uses() -> None:
    text = (ROOT / "docs" / "neuron.md").read_text(encoding="utf-8")
    stated = re.findall(r"sends\s+SIGTERM to the group and waits ([0-9.]+) s", text)
    assert stated == [f"{DEFAULT_STOP_TIMEOUT_SECONDS:g}"], stated
