"""The idle clock survives restarts (issue 11, item 2): last-active and state-entry times by device
UUID in the state directory, written atomically; an untrustworthy file is logged once and ignored;
the demo's abandoned job is idle since the scenario's history says, so its alert condition holds."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ExporterProcess, wait_until, within
from harness import demo_daemon
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_core_accounting import Rig, devices, rig

from exporter.accounting.idle_clock import (
    FILE_NAME,
    IdleClockFile,
    IdleClockInvalid,
    IdleMark,
    parse_marks,
    render_marks,
)
from exporter.clock import ManualClock
from exporter.config import Config, ConfigInvalid
from exporter.daemon import Daemon, Options
from exporter.sim.scenario import parse_scenario

__all__ = ["rig"]  # the fixture, shared with the core accounting tests

NOW = 1_800_000_000.0
UUID = "GPU-0b3c6a56-1f0e-4a43-9d43-5e0e7a1c2d11"


def _file(devices: object, version: object = 1) -> str:
    return json.dumps({"version": version, "devices": devices})


# --- the file -------------------------------------------------------------------------------------


def test_marks_round_trip_through_the_file(tmp_path: Path) -> None:
    marks = {UUID: IdleMark(NOW - 5000.0, "idle_held", NOW - 4000.0), "MIG-1": IdleMark(NOW - 1.5, "active", NOW - 9)}
    store = IdleClockFile(tmp_path)
    assert store.save(marks)
    assert store.load(NOW) == marks
    assert parse_marks(render_marks(marks), NOW) == marks
    # Atomic replace: no temporary file is left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]


def _nested(depth: int) -> str:
    return '{"version": 1, "devices": ' + "[" * depth + "]" * depth + "}"


BAD_FILES = {
    "garbage": "this is not json \x00\x01",
    "truncated": _file({UUID: {"last_active": NOW, "state": "active", "state_since": NOW}})[:-7],
    "deeply nested": _nested(200_000),
    "not an object": "[1, 2, 3]",
    "wrong version": _file({}, version=7),
    "devices not an object": _file([1, 2]),
    "mark not an object": _file({UUID: 5}),
    "time as text": _file({UUID: {"last_active": "yesterday", "state": "idle_held", "state_since": NOW}}),
    "time as bool": _file({UUID: {"last_active": True, "state": "idle_held", "state_since": NOW}}),
    "missing time": _file({UUID: {"state": "idle_held", "state_since": NOW}}),
    "NaN": _file({UUID: {"last_active": math.nan, "state": "active", "state_since": NOW}}),
    "Infinity": _file({UUID: {"last_active": NOW, "state": "active", "state_since": -math.inf}}),
    "huge integer": _file({UUID: {"last_active": 10**400, "state": "active", "state_since": NOW}}),
    "negative time": _file({UUID: {"last_active": -5, "state": "active", "state_since": NOW}}),
    "future": _file({UUID: {"last_active": NOW + 86400, "state": "active", "state_since": NOW}}),
    "unknown state": _file({UUID: {"last_active": NOW, "state": "sleeping", "state_since": NOW}}),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_untrustworthy_file_is_logged_once_and_ignored(
    name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_text(BAD_FILES[name], encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="exporter.accounting.idle_clock"):
        assert IdleClockFile(tmp_path).load(NOW) == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    message = warnings[0].getMessage()
    assert FILE_NAME in message and "ignoring it" in message
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_binary_oversized_and_unreadable_files_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"\xff\xfe" * 10)
    assert IdleClockFile(tmp_path).load(NOW) == {}
    path.write_bytes(b" " * (9 * 1024 * 1024))
    assert IdleClockFile(tmp_path).load(NOW) == {}
    path.unlink()
    path.mkdir()  # a directory where the file should be
    assert IdleClockFile(tmp_path).load(NOW) == {}
    assert not IdleClockFile(tmp_path).save({})  # cannot replace a directory: logged, not raised
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # and the temporary file is gone
    assert "not UTF-8" in caplog.text and "larger than" in caplog.text and "cannot be read" in caplog.text


def test_a_fifo_in_place_of_the_file_is_ignored_not_waited_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(tmp_path / FILE_NAME)  # opening it for reading would block until a writer came
    assert within(20, lambda: IdleClockFile(tmp_path).load(NOW)) == {}
    assert "FIFO (named pipe)" in caplog.text


def test_missing_file_is_a_first_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="exporter.accounting.idle_clock"):
        assert IdleClockFile(tmp_path / "new").load(NOW) == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert IdleClockFile(tmp_path / "new").save({})  # the directory is created


# --- the ledger -----------------------------------------------------------------------------------

HOST = {
    "gpus": [{"index": 0, "utilization": 0}, {"index": 1, "utilization": {"constant": 0.5}}],
    "processes": [{"pid": 7, "device": "0", "memory": "1GiB"}],
}


async def test_ledger_hands_its_clock_to_the_next_run(rig: Callable[..., Rig]) -> None:
    first = rig(HOST)
    await first.step(1.0)
    for _ in range(10):
        await first.step()
    wall_offset = first.clock.time() - first.clock.monotonic()
    marks = first.ledger.idle_marks(wall_offset)
    by = devices(first.ledger.snapshot(first.clock.monotonic()))
    assert by["nvidia0"].idle_seconds == pytest.approx(50.0)
    held = marks[by["nvidia0"].identity.uuid]
    assert held.state == "idle_held" and held.last_active == pytest.approx(first.clock.time() - 50.0)

    # The next run starts an hour later (the exporter was down), with a fresh ledger.
    second = rig(HOST)
    second.clock.advance(first.clock.time() - second.clock.time() + 3600.0)
    second.ledger.restore_idle_clock(marks, second.clock.time() - second.clock.monotonic())
    await second.step(1.0)
    by = devices(await second.step())
    # It went on from 50 s instead of starting from 0.
    assert by["nvidia0"].idle_seconds == pytest.approx(50.0 + second.clock.time() - first.clock.time())
    assert by["nvidia0"].idle_seconds > 3600.0
    assert by["nvidia0"].state == "idle_held"
    assert by["nvidia1"].idle_seconds == 0.0  # active now: the old mark does not matter
    # A device with a mark that is not seen this run keeps its mark in the next save.
    kept = second.ledger.idle_marks(second.clock.time() - second.clock.monotonic())
    assert set(kept) == set(marks)


# --- the demo -------------------------------------------------------------------------------------


async def test_demo_abandoned_job_is_idle_since_the_scenario_history() -> None:
    clock = ManualClock()
    async with demo_daemon("p4d-idle-fleet", clock) as daemon:
        daemon._start_idle_clock()
        for source in daemon.sources:
            await source.start()
        clock.advance(1.0)
        await daemon.poll_once()
        text = await daemon.cache.get(openmetrics=False)
    assert text is not None
    samples = _samples(text.body.decode())
    # The scenario: GPU 2 last computed 20 days before the start; its job has held it since.
    idle = samples[("accel_idle_seconds", (("device", "nvidia2"),))]
    assert idle == pytest.approx(20 * 86400 + 1.0)
    assert samples[("accel_state", (("device", "nvidia2"), ("state", "idle_held")))] == 1
    assert idle >= 14400  # the AcceleratorAbandoned condition holds at the first scrape
    assert samples[("accel_idle_seconds", (("device", "nvidia0"),))] == pytest.approx(3 * 86400 + 1.0)
    assert samples[("accel_idle_seconds", (("device", "nvidia3"),))] == 0.0  # working: no history


def _samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _idle_seconds(exporter: ExporterProcess, device: str) -> float:
    return _samples(exporter.metrics()).get(("accel_idle_seconds", (("device", device),)), math.nan)


# --- a real exporter, killed -----------------------------------------------------------------------


def test_idle_clock_survives_kill_9(tmp_path: Path, run_exporter: Callable[..., ExporterProcess]) -> None:
    scenario = tmp_path / "one-idle.yaml"
    scenario.write_text(
        "name: one-idle\nhost: {instance_type: p4d.24xlarge}\n"
        "gpus:\n  - {index: 0, utilization: 0}\n  - {index: 1, utilization: {constant: 0.5}}\n"
        "  - {index: 2, utilization: 0}\n"
        'processes:\n  - {pid: 4100, device: "2", memory: 8GiB, user: alice, command: python train.py}\n',
        encoding="utf-8",
    )
    state = tmp_path / "state"
    args = ["--demo", str(scenario), "--collector.interval", "0.2s", "--state.directory", str(state)]
    first = run_exporter(args)
    wait_until(lambda: _idle_seconds(first, "nvidia0") >= 3.0, "nvidia0 idle for 3 s", explain=first.log)
    before = _idle_seconds(first, "nvidia0")
    held_before = _idle_seconds(first, "nvidia2")  # held by a process computing nothing: Abandoned's clock
    assert held_before >= 3.0
    first.proc.send_signal(signal.SIGKILL)  # no shutdown handler runs: only the per-poll saves count
    first.proc.wait(10)
    saved = json.loads((state / FILE_NAME).read_text(encoding="utf-8"))
    assert len(saved["devices"]) == 3

    second = run_exporter(args)
    first_scrape = _samples(second.metrics())
    after = first_scrape[("accel_idle_seconds", (("device", "nvidia0"),))]
    # A fresh clock would show well under a second; this one went on (kill and start took time too).
    assert after >= before, second.log()
    # The held GPU too, from the first scrape on: its first poll has no utilization sample yet,
    # which must not count as activity.
    assert first_scrape[("accel_idle_seconds", (("device", "nvidia2"),))] >= held_before, second.log()
    assert first_scrape[("accel_state", (("device", "nvidia2"), ("state", "idle_held")))] == 1
    wait_until(lambda: _idle_seconds(second, "nvidia0") > after + 0.5, "the clock keeps growing", explain=second.log)
    assert _idle_seconds(second, "nvidia1") == 0.0
    assert "idle clock: restored 3 device(s)" in second.log()


def test_without_state_directory_one_info_line_says_so(run_exporter: Callable[..., ExporterProcess]) -> None:
    exporter = run_exporter(["--demo", "g6-inference", "--collector.interval", "0.2s"])
    exporter.metrics()
    lines = [line for line in exporter.log().splitlines() if "no state directory" in line]
    assert len(lines) == 1 and "level=info" in lines[0], exporter.log()


async def test_unwritable_state_directory_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", encoding="utf-8")
    daemon = Daemon(Options(state_directory=str(blocker / "state")), Config(), ManualClock())
    daemon._start_idle_clock()
    await daemon._save_idle_clock()
    await daemon._save_idle_clock()
    assert dict(daemon.ledger.snapshot(0.0).errors)[("exporter", "idle_clock_write")] == 2


def test_scenario_history_must_lie_before_the_start() -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_scenario({"gpus": [{"index": 0, "last_active": 60}]}, "test")
    assert "last_active" in str(info.value) and "at most 0" in str(info.value)
    assert parse_scenario({"gpus": [{"index": 0, "last_active": -60}]}, "test").gpus[0].last_active == -60.0


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(["active", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(devices=st.dictionaries(st.text(max_size=8), _JSON, max_size=3), version=st.sampled_from([1, 1.0, "1", 2]))
def test_any_json_gives_marks_or_idle_clock_invalid(devices: object, version: object) -> None:
    try:
        marks = parse_marks(_file(devices, version), NOW)
    except IdleClockInvalid:
        return
    for mark in marks.values():
        assert 0 < mark.last_active <= NOW + 300 and 0 < mark.state_since <= NOW + 300


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=256))
def test_any_bytes_load_as_marks_or_nothing(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / FILE_NAME).write_bytes(data)
        assert isinstance(IdleClockFile(scratch).load(NOW), dict)
