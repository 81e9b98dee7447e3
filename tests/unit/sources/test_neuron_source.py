"""NeuronSource end to end: the real source supervising the fake neuron-monitor (or small scripts).

Every test runs real subprocesses; only the Neuron hardware is simulated.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TESTS
from conftest import process_gone as reaped  # exited *and* reaped: a zombie still answers kill 0

from exporter.clock import SystemClock
from exporter.config.model import NeuronSettings
from exporter.readings import SourceReport
from exporter.sim.neuron_monitor import write_fake_monitor_wrapper
from exporter.sources.neuron import NeuronSource, monitor_config, neuron_auto_enabled
from exporter.sources.procfs import ProcessFacts

FIXTURES = TESTS / "fixtures" / "neuron-monitor"
PERIOD = 0.2


class FakeProcs:
    def __init__(self, facts: dict[int, ProcessFacts] | None = None) -> None:
        self.facts_by_pid = facts or {}

    def facts(self, pid: int) -> ProcessFacts | None:
        return self.facts_by_pid.get(pid)


def scenario_file(directory: Path, *, faults: dict[str, Any] | None = None, name: str = "t") -> Path:
    document = {
        "name": name,
        "host": {
            "provider": "aws",
            "instance_type": "inf2.24xlarge",
            "instance_id": "i-0123456789abcdef0",
            "zone": "us-east-2b",
        },
        "neuron": {
            "device_type": "inferentia2",
            "devices": 2,
            "cores_per_device": 2,
            "memory_per_device": "32GiB",
            "runtimes": [
                {
                    "pid": 4242,
                    "tag": "serve",
                    "cores": [0],
                    "listed_cores": [1, 2, 3],
                    "utilization": 0.5,
                    "memory_per_core": "4GiB",
                    "executions_per_second": 50,
                },
                {
                    "pid": 4343,
                    "tag": "notebook",
                    "cores": [1],
                    "listed_cores": [0],
                    "utilization": 0,
                    "memory_per_core": "1GiB",
                },
            ],
            "faults": faults or {},
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def fake_monitor(tmp_path: Path, *, faults: dict[str, Any] | None = None, name: str = "t") -> Path:
    return write_fake_monitor_wrapper(tmp_path / f"bin-{name}", str(scenario_file(tmp_path, faults=faults, name=name)))


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def source(monitor: Path | str, **kwargs: Any) -> NeuronSource:
    settings = NeuronSettings(monitor_path=str(monitor), period_seconds=PERIOD)
    kwargs.setdefault("backoff_initial_seconds", 0.05)
    kwargs.setdefault("stop_timeout_seconds", 1.0)
    return NeuronSource(
        settings, SystemClock(), FakeProcs({4242: ProcessFacts(user="svc", command="serve.py")}), **kwargs
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def poll_until(src: NeuronSource, accept: Callable[[SourceReport], bool], timeout: float = 10.0) -> SourceReport:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        report = await src.poll()
        if accept(report):
            return report
        assert asyncio.get_running_loop().time() < deadline, f"no accepted report; last: {report}"
        await asyncio.sleep(0.05)


def errors(report: SourceReport) -> dict[str, int]:
    return dict(report.errors)


async def stopped(src: NeuronSource) -> None:
    await asyncio.wait_for(src.stop(), 10)
    assert src.child_pids, "the source never started a child"
    for pid in src.child_pids + src.parser_pids:
        assert reaped(pid), f"child {pid} survived stop() or was left a zombie"


async def test_reads_the_fake_monitor_exactly(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path))
    await src.start()
    try:
        assert src.config_path is not None
        config = json.loads(src.config_path.read_text())
        assert config == monitor_config(PERIOD)
        assert config["period"] == "200ms"
        assert [m["type"] for m in config["neuron_runtimes"][0]["metrics"]] == [
            "neuroncore_counters",
            "memory_used",
            "execution_stats",
        ]
        assert [m["type"] for m in config["system_metrics"]] == ["neuron_hw_counters", "memory_info"]
        await wait_for(lambda: src.records >= 4)
        report = await src.poll()
        assert report.success and report.complete and report.collector == "neuron"
        cores = {r.identity.device: r for r in report.devices}
        assert sorted(cores) == ["neuroncore0", "neuroncore1", "neuroncore2", "neuroncore3"]
        # period x utilization integrates the scenario's 50 % exactly, whatever the windows were.
        assert cores["neuroncore0"].covered_seconds > 0.3
        assert cores["neuroncore0"].busy_seconds == pytest.approx(0.5 * cores["neuroncore0"].covered_seconds, rel=1e-9)
        assert [(p.pid, p.runtime_tag, p.user) for p in cores["neuroncore0"].processes] == [(4242, "serve", "svc")]
        assert cores["neuroncore0"].processes[0].used_memory_bytes == 4 * 2**30
        assert [p.pid for p in cores["neuroncore1"].processes] == [4343]  # held, idle
        assert cores["neuroncore1"].utilization == 0.0
        assert cores["neuroncore2"].processes == () and cores["neuroncore2"].utilization == 0.0
        assert cores["neuroncore3"].identity.parent == "neuron1"
        assert cores["neuroncore0"].memory_total_bytes == 16 * 2**30
        executed = sum(c.value for c in cores["neuroncore0"].counters if c.metric == "accel_neuron_execution_total")
        assert executed > 0
        assert report.host_hints is not None and report.host_hints.instance_type == "inf2.24xlarge"
        assert report.host_hints.region == "us-east-2"
        assert errors(report) == {}
    finally:
        await stopped(src)
    assert src.config_path is None


async def test_garbage_and_oversized_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    faults = {"garbage_every": 2, "oversized_every": 3, "oversized_bytes": "2MiB"}
    src = source(fake_monitor(tmp_path, faults=faults), line_limit_bytes=2**20)
    await src.start()
    seen: dict[str, int] = {}
    try:
        await wait_for(lambda: src.records >= 7)
        report = await src.poll()
        seen = errors(report)
        assert report.success
        assert seen.get("parse", 0) >= 2
        assert seen.get("oversize", 0) >= 1
        # The stream goes on after each bad line: records 4, 5, 7 ... arrived after the first oversized one.
        assert report.devices[0].covered_seconds > 0
    finally:
        await stopped(src)
    assert "restart" not in seen


async def test_two_megabyte_lines_fit_the_default_limit(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path, faults={"oversized_every": 2, "oversized_bytes": "2MiB"}))
    await src.start()
    try:
        await wait_for(lambda: src.records >= 4)
        report = await src.poll()
        assert report.success and errors(report) == {}
    finally:
        await stopped(src)


async def test_group_errors_are_counted(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path, faults={"error_every": 1}))
    await src.start()
    try:
        await wait_for(lambda: src.records >= 3)
        report = await src.poll()
        assert report.success
        assert errors(report)["group_error"] >= 3
        # The hardware-counter error costs the ECC counters, never the cores.
        assert len(report.devices) == 4
        assert not any(c.metric == "accel_neuron_ecc_errors_total" for d in report.devices for c in d.counters)
    finally:
        await stopped(src)


async def test_missing_binary_clear_message_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "neuron-monitor"
    assert not neuron_auto_enabled(NeuronSettings(monitor_path=str(missing)))
    src = source(missing)
    caplog.set_level(logging.INFO, logger="exporter.sources.neuron")
    await src.start()
    try:
        reports = []
        for _ in range(4):
            await asyncio.sleep(0.05)
            reports.append(await src.poll())
        expected = f"neuron-monitor not found at {missing}; install aws-neuronx-tools or set --neuron.monitor-path"
        assert all(not r.success and not r.complete and r.devices == () for r in reports)
        assert all(r.message == expected for r in reports)
        assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == [expected]
        assert sum(errors(r).get("not_found", 0) for r in reports) == 1
    finally:
        await src.stop()
    assert src.child_pids == ()


async def test_not_executable_is_not_auto_enabled(tmp_path: Path) -> None:
    plain = tmp_path / "neuron-monitor"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    assert not neuron_auto_enabled(NeuronSettings(monitor_path=str(plain)))
    plain.chmod(0o755)
    assert neuron_auto_enabled(NeuronSettings(monitor_path=str(plain)))
    assert not neuron_auto_enabled(NeuronSettings(monitor_path="neuron-monitor"))  # must be absolute


async def test_crash_loop_backs_off_then_recovers(tmp_path: Path) -> None:
    crashing = fake_monitor(tmp_path, faults={"crash_after_lines": 1}, name="crash")
    healthy = fake_monitor(tmp_path, name="ok")
    counter = tmp_path / "starts"
    wrapper = script(
        tmp_path,
        "neuron-monitor",
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        f'if [ "$n" -le 4 ]; then exec {crashing} "$@"; fi\n'
        f'exec {healthy} "$@"',
    )
    src = source(wrapper, backoff_initial_seconds=0.1, backoff_max_seconds=5.0)
    await src.start()
    outcomes: list[bool] = []

    def recovered(report: SourceReport) -> bool:
        outcomes.append(report.success)
        return src.restarts >= 4 and report.success and report.devices[0].covered_seconds > 0

    try:
        await poll_until(src, recovered, timeout=20)
        assert False in outcomes, "a crashed monitor must show as a failed poll"
        assert outcomes[-1] is True
    finally:
        await stopped(src)
    delays = src.restart_delays
    assert len(delays) >= 4
    # Exponential backoff with jitter (x0.8-1.2): every wait is longer than the one before.
    assert all(later > earlier for earlier, later in itertools.pairwise(delays[:4]))
    assert delays[3] >= 8 * 0.1 * 0.8
    assert len(src.child_pids) >= 5


async def test_restart_errors_are_reported(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path, faults={"crash_after_lines": 2}), backoff_initial_seconds=0.05)
    await src.start()
    try:
        await wait_for(lambda: src.restarts >= 2)
        report = await src.poll()
        assert errors(report).get("restart", 0) >= 2
    finally:
        await stopped(src)


async def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    fake = fake_monitor(tmp_path)
    wrapper = script(tmp_path, "neuron-monitor", f"trap '' TERM\nexec {fake} \"$@\"")
    src = source(wrapper, stop_timeout_seconds=0.3)
    await src.start()
    await wait_for(lambda: src.records >= 1)
    loop = asyncio.get_running_loop()
    before = loop.time()
    await stopped(src)
    assert loop.time() - before >= 0.3  # it had to escalate to SIGKILL


async def _started_sigterm_ignorer(tmp_path: Path, **kwargs: Any) -> tuple[NeuronSource, int, Path]:
    """A source whose child ignores SIGTERM (`sleep` inherits the ignored signal across exec)."""
    ready = tmp_path / "ready"
    wrapper = script(tmp_path, "neuron-monitor", f"trap '' TERM\ntouch {shlex.quote(str(ready))}\nexec sleep 60")
    settings = NeuronSettings(monitor_path=str(wrapper), period_seconds=PERIOD)
    src = NeuronSource(settings, SystemClock(), FakeProcs(), **kwargs)
    await src.start()
    await wait_for(lambda: ready.exists() and bool(src.child_pids))
    assert src.config_path is not None
    return src, src.child_pids[0], src.config_path.parent


async def _gone(pid: int, timeout: float = 2.0) -> bool:
    # A SIGKILLed child is reaped by asyncio's child watcher shortly after; allow it a moment.
    deadline = asyncio.get_running_loop().time() + timeout
    while not reaped(pid):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_default_stop_fits_the_daemons_shutdown_grace(tmp_path: Path) -> None:
    src, pid, config_dir = await _started_sigterm_ignorer(tmp_path)  # default stop timeout
    await asyncio.wait_for(src.stop(), 1.5)  # daemon.SHUTDOWN_GRACE_SECONDS
    assert reaped(pid), "the SIGTERM-ignoring child survived stop() or was left a zombie"
    assert not config_dir.exists()


async def test_cancelled_stop_still_kills_the_child_and_removes_the_config(tmp_path: Path) -> None:
    src, pid, config_dir = await _started_sigterm_ignorer(tmp_path, stop_timeout_seconds=30.0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(src.stop(), 0.5)  # cancelled while waiting for SIGTERM to work
    assert not config_dir.exists()
    assert await _gone(pid), "the child outlived a cancelled stop()"


async def test_process_facts_are_read_off_the_event_loop(tmp_path: Path) -> None:
    class ThreadNotingProcs(FakeProcs):
        def __init__(self) -> None:
            super().__init__({4242: ProcessFacts(user="svc", command="serve.py")})
            self.threads: set[int] = set()

        def facts(self, pid: int) -> ProcessFacts | None:
            self.threads.add(threading.get_ident())
            return super().facts(pid)

    procs = ThreadNotingProcs()
    settings = NeuronSettings(monitor_path=str(fake_monitor(tmp_path)), period_seconds=PERIOD)
    src = NeuronSource(settings, SystemClock(), procs, backoff_initial_seconds=0.05, stop_timeout_seconds=1.0)
    await src.start()
    try:
        report = await poll_until(src, lambda r: r.success and any(d.processes for d in r.devices))
        users = {p.pid: p.user for d in report.devices for p in d.processes}
        assert users[4242] == "svc"
        assert procs.threads and threading.get_ident() not in procs.threads
    finally:
        await stopped(src)


async def test_stop_ends_a_shell_pipeline_replaying_a_fixture(tmp_path: Path) -> None:
    fixture = FIXTURES / "trn1n-32xlarge-one-runtime.json"
    # A shell loop with `sleep` children: the whole process group must go on stop().
    wrapper = script(tmp_path, "neuron-monitor", f"while :; do cat {shlex.quote(str(fixture))}; sleep {PERIOD}; done")
    src = source(wrapper)
    await src.start()
    try:
        await wait_for(lambda: src.records >= 2)
        report = await src.poll()
        assert report.success
        cores = {r.identity.device: r for r in report.devices}
        assert len(cores) == 32
        assert cores["neuroncore6"].utilization == pytest.approx(0.414)
        assert {d for d, r in cores.items() if r.processes} == {
            "neuroncore0",
            "neuroncore1",
            "neuroncore6",
            "neuroncore11",
        }
        assert errors(report)["group_error"] >= 2  # the vCPU group of every line
        assert report.host_hints is not None and report.host_hints.instance_id == "i-09db9b55e0095612f"
    finally:
        await stopped(src)
    assert src.restarts == 0


async def test_stderr_is_drained(tmp_path: Path) -> None:
    fake = fake_monitor(tmp_path)
    # 4 MB on stderr before the first record. asyncio reads up to 2 x limit (2 MiB here) unasked and
    # then stops; without draining, the pipe fills and the monitor blocks before its first line.
    wrapper = script(
        tmp_path, "neuron-monitor", f"yes 'debug: chatter' | head -c 4000000 >&2\nexec {fake} --verbose 1 \"$@\""
    )
    src = source(wrapper, line_limit_bytes=2**20)
    await src.start()
    try:
        await wait_for(lambda: src.records >= 2, timeout=10)
    finally:
        await stopped(src)


async def test_a_stalled_monitor_is_restarted(tmp_path: Path) -> None:
    wrapper = script(tmp_path, "neuron-monitor", "exec sleep 30")
    src = source(wrapper, stall_timeout_seconds=0.3)
    await src.start()
    try:
        await wait_for(lambda: src.restarts >= 1)
        report = await src.poll()
        assert not report.success and "stalled" in report.message
        assert errors(report).get("stall", 0) >= 1
    finally:
        await stopped(src)


async def test_no_hardware_info_is_a_failed_poll(tmp_path: Path) -> None:
    line = json.dumps({"neuron_runtime_data": [], "neuron_hardware_info": {"error": "neuron driver not loaded"}})
    wrapper = script(tmp_path, "neuron-monitor", f"while :; do echo {shlex.quote(line)}; sleep {PERIOD}; done")
    src = source(wrapper)
    await src.start()
    try:
        await wait_for(lambda: src.records >= 1)
        report = await src.poll()
        assert not report.success and not report.complete
        assert "neuron_hardware_info" in report.message
        assert errors(report)["group_error"] >= 1
    finally:
        await stopped(src)


async def test_poll_before_start_and_after_stop_never_raises(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path))
    report = await src.poll()
    assert not report.success
    await src.stop()
    assert not (await src.poll()).success


def test_wrapper_is_an_absolute_executable(tmp_path: Path) -> None:
    wrapper = write_fake_monitor_wrapper(tmp_path / "rel", "inf2-inference")
    assert wrapper.is_absolute() and os.access(wrapper, os.X_OK)
    text = wrapper.read_text()
    assert sys.executable in text and "--scenario inf2-inference" in text


def _bad_first_run(tmp_path: Path, misbehave: str) -> Path:
    """A neuron-monitor whose first run does `misbehave`; every later run is the healthy fake."""
    healthy = fake_monitor(tmp_path, name="ok")
    counter = tmp_path / "starts"
    return script(
        tmp_path,
        "neuron-monitor",
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        f'if [ "$n" -gt 1 ]; then exec {healthy} "$@"; fi\n{misbehave}',
    )


async def _back_after_restart(src: NeuronSource, caplog: pytest.LogCaptureFixture) -> SourceReport:
    """Wait for the watchdog's restart, then for the first successful poll after it."""
    caplog.set_level(logging.WARNING, logger="exporter.sources.neuron")
    await wait_for(lambda: src.restarts >= 1)
    first = await src.poll()  # the first poll carries everything counted so far
    assert (errors(first).get("stall"), errors(first).get("restart")) == (1, 1)
    assert any("stalled (no line for" in rec.getMessage() for rec in caplog.records)
    return await poll_until(src, lambda r: r.success and r.devices[0].covered_seconds > 0)


async def test_a_pause_inside_an_oversized_line_restarts_the_monitor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 MB with no newline over a 1 MiB limit, then a pause far beyond the stall timeout. The skip
    # used to take the pause for EOF and wait for an exit that never came, reporting nothing for good.
    wrapper = _bad_first_run(tmp_path, "head -c 2000000 /dev/zero | tr '\\0' x\nexec sleep 60")
    src = source(wrapper, line_limit_bytes=2**20, stall_timeout_seconds=1.5)
    await src.start()
    try:
        report = await _back_after_restart(src, caplog)
        assert len(report.devices) == 4
        assert len(src.child_pids) >= 2
    finally:
        await stopped(src)


async def test_a_monitor_that_closes_stdout_but_lives_on_is_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrapper = _bad_first_run(tmp_path, "exec >&-\nexec sleep 60")
    src = source(wrapper, stall_timeout_seconds=1.5)
    await src.start()
    try:
        await _back_after_restart(src, caplog)
    finally:
        await stopped(src)


async def test_bad_values_are_counted_and_not_reported_as_idle(tmp_path: Path) -> None:
    core = {"neuroncore_utilization": float("nan")}
    line = json.dumps(
        {
            "neuron_runtime_data": [
                {"pid": 7, "report": {"neuroncore_counters": {"period": PERIOD, "neuroncores_in_use": {"0": core}}}}
            ],
            "neuron_hardware_info": {"neuron_device_count": 1, "neuroncore_per_device_count": 2},
        }
    )
    wrapper = script(tmp_path, "neuron-monitor", f"while :; do echo {shlex.quote(line)}; sleep {PERIOD}; done")
    src = source(wrapper)
    await src.start()
    try:
        report = await poll_until(src, lambda r: r.success and r.devices[0].unknown_seconds > 0)
        assert errors(report)["unknown_busy"] >= 1
        core0, core1 = report.devices
        assert core0.covered_seconds == 0.0 and core0.utilization is None  # NaN used to read as 0 %
        assert core1.covered_seconds > 0 and core1.utilization == 0.0  # nobody lists core 1
    finally:
        await stopped(src)


async def test_lines_are_parsed_in_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.sources.neuron as neuron_module
    from exporter.sources.neuron_parse import MonitorRecord, parse_line

    in_process: list[str] = []

    def noting_parse(line: bytes | str) -> MonitorRecord:
        in_process.append(threading.current_thread().name)
        return parse_line(line)

    monkeypatch.setattr(neuron_module, "parse_line", noting_parse)
    src = source(fake_monitor(tmp_path))
    await src.start()
    try:
        await wait_for(lambda: src.records >= 3)
        assert (await src.poll()).success
        assert len(src.parser_pids) == 1 and not reaped(src.parser_pids[0])
    finally:
        await stopped(src)
    assert in_process == [], "a line was parsed in the exporter's process although the child ran"


async def test_in_process_lines_are_parsed_on_the_sources_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporter.sources.neuron as neuron_module
    from exporter.sources.neuron_parse import MonitorRecord, parse_line

    threads: list[str] = []

    def noting_parse(line: bytes | str) -> MonitorRecord:
        threads.append(threading.current_thread().name)
        return parse_line(line)

    monkeypatch.setattr(neuron_module, "parse_line", noting_parse)
    src = source(fake_monitor(tmp_path), parse_in_child=False)
    await src.start()
    try:
        await wait_for(lambda: src.records >= 3)
        assert (await src.poll()).success
        assert src.parser_pids == ()
    finally:
        await stopped(src)
    # Not the event loop's thread, and not the loop's default executor (asyncio_N threads).
    assert threads and set(threads) == {"neuron-parse"}


async def test_a_crashed_parser_is_counted_and_restarted_while_lines_go_on(tmp_path: Path) -> None:
    src = source(fake_monitor(tmp_path))
    await src.start()
    try:
        first = await poll_until(src, lambda r: r.success and bool(r.devices))
        devices = {d.identity.device for d in first.devices}
        await wait_for(lambda: len(src.parser_pids) == 1)
        crashed = src.parser_pids[0]
        os.kill(crashed, signal.SIGKILL)
        # Lines go on (in process while the child backs off, then through a new child).
        await wait_for(lambda: len(src.parser_pids) == 2, timeout=20)
        seen: dict[str, int] = {}

        def counted(report: SourceReport) -> bool:
            for reason, count in report.errors:
                seen[reason] = seen.get(reason, 0) + count
            return report.success and seen.get("parser_crash", 0) >= 1

        later = await poll_until(src, counted)
        assert seen["parser_crash"] == 1
        assert {d.identity.device for d in later.devices} == devices
        records = src.records
        await wait_for(lambda: src.records >= records + 3)
        assert reaped(crashed)
    finally:
        await stopped(src)
