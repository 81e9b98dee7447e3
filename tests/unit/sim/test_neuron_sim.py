"""The fake neuron-monitor: CLI behaviour, timing, faults, and the built-in Neuron scenarios."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from exporter.sim.neuron_monitor import ScenarioNeuronProcesses, Window, build_record, encode, read_period
from exporter.sim.scenario import load_scenario
from exporter.sources.neuron_cores import CoreTracker
from exporter.sources.neuron_parse import parse_line


def write_config(tmp_path: Path, period: str = "200ms") -> Path:
    path = tmp_path / "monitor.json"
    path.write_text(json.dumps({"period": period, "neuron_runtimes": [{"tag_filter": ".*", "metrics": []}]}))
    return path


def write_scenario(tmp_path: Path, neuron: dict[str, Any] | None, name: str = "s") -> Path:
    document: dict[str, Any] = {"name": name, "host": {"instance_type": "inf2.xlarge", "instance_id": "i-1"}}
    if neuron is not None:
        document["neuron"] = neuron
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def small_neuron(**faults: Any) -> dict[str, Any]:
    return {
        "device_type": "inferentia2",
        "devices": 1,
        "cores_per_device": 2,
        "runtimes": [
            {"pid": 77, "tag": "x", "cores": [0], "utilization": 0.25, "memory_per_core": "1GiB", "start": "100s"}
        ],
        "faults": faults,
    }


def fake(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "exporter.sim.neuron_monitor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
    )


def first_lines(proc: subprocess.Popen[bytes], count: int, within: float = 60.0) -> tuple[list[bytes], bytes]:
    """The first `count` stdout lines, then stop the process: waits on output, not on the clock."""
    killer = threading.Timer(within, proc.kill)  # a hung child fails the test instead of hanging it
    killer.start()
    try:
        assert proc.stdout is not None
        lines: list[bytes] = []
        while len(lines) < count:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip(b"\n"))
    finally:
        killer.cancel()
        proc.terminate()
    _, err = proc.communicate(timeout=30)
    return lines, err


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "no scenario: pass --scenario NAME_OR_PATH or set ACCEL_SIM_SCENARIO"),
        (("--scenario", "no-such-scenario"), {}, "no such scenario"),
        (("--scenario", "inf2-inference"), {"ACCEL_SIM_TIME_OFFSET": "soon"}, "ACCEL_SIM_TIME_OFFSET must be a number"),
        (("--scenario", "g6-inference"), {}, "has no neuron: section"),
    ],
)
def test_bad_invocations_exit_2_with_one_clear_line(args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    proc = fake(*args, env={"ACCEL_SIM_SCENARIO": "", **env})
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert out == b""
    assert message in err.decode()
    assert b"Traceback" not in err


def test_bad_config_period(tmp_path: Path) -> None:
    proc = fake("-c", str(write_config(tmp_path, period="soon")), "--scenario", "inf2-inference")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and b"invalid period 'soon'" in err
    with pytest.raises(ValueError, match="cannot read config file"):
        read_period(str(tmp_path / "missing.json"))
    assert read_period(None) == 5.0


def test_first_record_at_once_with_a_tiny_period_then_every_period(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, small_neuron())
    # The scenario comes from the environment and its clock is shifted by 200 s.
    proc = fake(
        "-c", str(write_config(tmp_path)), env={"ACCEL_SIM_SCENARIO": str(scenario), "ACCEL_SIM_TIME_OFFSET": "200"}
    )
    lines, err = first_lines(proc, 6)
    records = [json.loads(line) for line in lines]
    assert len(records) == 6
    periods = [r["system_data"]["memory_info"]["period"] for r in records]
    assert periods[0] < 0.01
    assert all(p == pytest.approx(0.2, abs=0.05) for p in periods[1:])
    # The runtime starts at scenario time 100 s: with the offset it is there from the first line.
    assert all(r["neuron_runtime_data"][0]["pid"] == 77 for r in records)
    second = records[1]["neuron_runtime_data"][0]["report"]["neuroncore_counters"]
    assert second["neuroncores_in_use"]["0"]["neuroncore_utilization"] == pytest.approx(25.0)
    assert b"scenario s, period 0.2s" in err


def test_without_offset_the_runtime_is_not_there_yet(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, small_neuron())
    lines, _ = first_lines(fake("-c", str(write_config(tmp_path)), "--scenario", str(scenario)), 3)
    assert len(lines) == 3 and all(json.loads(line)["neuron_runtime_data"] == [] for line in lines)


def test_crash_garbage_and_oversized_faults(tmp_path: Path) -> None:
    scenario = write_scenario(
        tmp_path, small_neuron(crash_after_lines=4, garbage_every=2, oversized_every=3, oversized_bytes="300KiB")
    )
    proc = fake("-c", str(write_config(tmp_path, "100ms")), "--scenario", str(scenario))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert b"simulated crash after 4 records" in err
    lines = out.splitlines()
    assert len(lines) == 4 + 2  # 4 records, garbage after records 2 and 4
    parsed = []
    for line in lines:
        try:
            parsed.append(parse_line(line))
        except ValueError:
            parsed.append(None)
    assert [p is None for p in parsed] == [False, False, True, False, False, True]
    assert abs(len(lines[3]) - 300 * 1024) < 64  # record 3 padded to the requested size


def test_error_every_sets_the_hw_counter_error(tmp_path: Path) -> None:
    scenario = load_scenario(str(write_scenario(tmp_path, small_neuron(error_every=2))))
    ok = build_record(scenario, Window(0, 1), 1)
    bad = build_record(scenario, Window(1, 2), 2)
    assert ok["system_data"]["neuron_hw_counters"]["error"] == ""
    assert bad["system_data"]["neuron_hw_counters"]["error"] != ""
    assert bad["system_data"]["neuron_hw_counters"]["neuron_devices"] is None


def test_exits_quietly_when_the_reader_goes_away(tmp_path: Path) -> None:
    proc = fake("-c", str(write_config(tmp_path, "100ms")), "--scenario", "trn1-training")
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"{")
    proc.stdout.close()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and b"Traceback" not in proc.stderr.read()


def test_per_window_utilization_is_the_exact_pattern_integral() -> None:
    scenario = load_scenario("inf2-inference")
    assert scenario.neuron is not None
    serve = scenario.neuron.runtimes[1]  # burst pattern
    for a, b in [(0.0, 5.0), (5.0, 10.3), (10.3, 11.0), (2.9, 3.1)]:
        record = build_record(scenario, Window(a, b), 2)
        entry = next(r for r in record["neuron_runtime_data"] if r["pid"] == serve.pid)
        counters = entry["report"]["neuroncore_counters"]
        util = counters["neuroncores_in_use"][str(serve.cores[0])]["neuroncore_utilization"]
        assert counters["period"] * util / 100 == pytest.approx(serve.utilization.busy(a, b), abs=1e-12)


def test_execution_counts_add_up_over_any_windows() -> None:
    scenario = load_scenario("inf2-inference")
    assert scenario.neuron is not None
    rt = scenario.neuron.runtimes[0]
    bounds = [0.0, 0.3, 1.0, 1.05, 2.7, 4.0, 7.77, 10.0]
    total = 0
    for a, b in itertools.pairwise(bounds):
        entry = next(r for r in build_record(scenario, Window(a, b), 2)["neuron_runtime_data"] if r["pid"] == rt.pid)
        total += entry["report"]["execution_stats"]["execution_summary"]["completed"]
    assert total == int(rt.executions_per_second * 10.0)


def core_states(name: str, t: float = 30.0) -> dict[str, set[int]]:
    scenario = load_scenario(name)
    tracker = CoreTracker("h")
    tracker.ingest(parse_line(encode(build_record(scenario, Window(t - 5.0, t), 2))))
    states: dict[str, set[int]] = {"active": set(), "idle_held": set(), "idle_free": set()}
    for reading in tracker.readings(ScenarioNeuronProcesses(scenario, epoch=1.8e9)):
        core = int(reading.identity.device.removeprefix("neuroncore"))
        if (reading.utilization or 0.0) > 0.01:
            states["active"].add(core)
        elif reading.processes:
            states["idle_held"].add(core)
        else:
            states["idle_free"].add(core)
    return states


def test_inf2_inference_scenario_shape() -> None:
    states = core_states("inf2-inference")
    assert sum(len(s) for s in states.values()) == 24
    assert set(range(0, 10)) | {12, 13} == states["active"]
    assert states["idle_held"] == {10, 11}  # the forgotten notebook
    assert states["idle_free"] == set(range(14, 24))
    # Before the batch job starts, its cores are free.
    assert {12, 13} <= core_states("inf2-inference", t=10.0)["idle_free"]


def test_trn1_training_scenario_shape() -> None:
    states = core_states("trn1-training")
    assert states == {"active": set(range(16)), "idle_held": set(range(16, 24)), "idle_free": set(range(24, 32))}


def test_scenario_process_facts() -> None:
    scenario = load_scenario("trn1-training")
    procs = ScenarioNeuronProcesses(scenario, epoch=1_800_000_000.0)
    facts = procs.facts(7002)
    assert facts is not None
    assert facts.user == "dave" and facts.command.startswith("python finetune.py")
    assert facts.start_time_seconds == 1_800_000_000.0 - 1_209_600
    assert procs.facts(1) is None
