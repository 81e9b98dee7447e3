"""neuron_cores: NeuronCore accounting from parsed records (fixtures, overlaps, exact integration)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from conftest import TESTS

from exporter.accounting.ledger import Ledger
from exporter.accounting.states import ACTIVE, IDLE_FREE, IDLE_HELD
from exporter.config.model import AccountingSettings, AttributionSettings, HostSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.readings import DeviceReading, SourceReport
from exporter.sim.neuron_monitor import Window, build_record
from exporter.sim.patterns import Burst, Constant, Schedule
from exporter.sim.scenario import NeuronHost, NeuronRuntime, Scenario
from exporter.sources.neuron_cores import CoreTracker, host_hints, model_for
from exporter.sources.neuron_parse import InstanceInfo, parse_document, parse_line
from exporter.sources.procfs import ProcessFacts

FIXTURES = TESTS / "fixtures" / "neuron-monitor"


class FakeProcs:
    """pid -> facts, like /proc; pids not listed have exited."""

    def __init__(self, facts: dict[int, ProcessFacts] | None = None) -> None:
        self.facts_by_pid = facts or {}
        self.calls: list[int] = []

    def facts(self, pid: int) -> ProcessFacts | None:
        self.calls.append(pid)
        return self.facts_by_pid.get(pid)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def by_core(readings: tuple[DeviceReading, ...]) -> dict[int, DeviceReading]:
    return {int(r.identity.device.removeprefix("neuroncore")): r for r in readings}


def counters(reading: DeviceReading) -> dict[tuple[str, str], float]:
    return {(c.metric, c.labels[1][1]): c.value for c in reading.counters}


def hw(devices: int = 1, cores: int = 2, memory: int = 32 * 2**30) -> dict[str, Any]:
    return {
        "neuron_device_type": "trainium",
        "neuron_device_count": devices,
        "neuroncore_per_device_count": cores,
        "neuron_device_memory_size": memory,
        "error": "",
    }


def rt(
    pid: int, period: float, util: dict[int, float], memory: dict[int, int] | None = None, tag: str = ""
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "neuroncore_counters": {
            "period": period,
            "neuroncores_in_use": {str(c): {"neuroncore_utilization": u} for c, u in util.items()},
            "error": "",
        }
    }
    if memory is not None:
        report["memory_used"] = {
            "period": period,
            "neuron_runtime_used_bytes": {
                "usage_breakdown": {"neuroncore_memory_usage": {str(c): {"tensors": m} for c, m in memory.items()}}
            },
            "error": "",
        }
    return {"pid": pid, "neuron_runtime_tag": tag or str(pid), "error": "", "report": report}


def doc(runtimes: list[dict[str, Any]], devices: int = 1, cores: int = 2, period: float = 5.0) -> dict[str, Any]:
    return {
        "neuron_runtime_data": runtimes,
        "system_data": {"memory_info": {"period": period, "error": ""}},
        "instance_info": {
            "instance_id": "i-0abc",
            "instance_type": "trn1.2xlarge",
            "instance_availability_zone": "us-west-2d",
        },
        "neuron_hardware_info": hw(devices, cores),
    }


def test_idle_trn1_2xlarge_two_idle_free_cores_and_no_sample_from_tiny_period() -> None:
    tracker = CoreTracker("host-a", min_period=0.5)
    tracker.ingest(parse_line(fixture("idle-trn1-2xlarge.json")))
    readings = tracker.readings(FakeProcs())
    assert [r.identity.device for r in readings] == ["neuroncore0", "neuroncore1"]
    for r in readings:
        assert r.up
        # The 0.47 ms first capture is not a utilization sample: nothing is integrated.
        assert r.busy_seconds == 0.0 and r.covered_seconds == 0.0
        # ...but no runtime exists at all, so the cores are certainly not busy: idle_free.
        assert r.utilization == 0.0
        assert r.processes == () and r.memory_used_bytes == 0 and not r.memory_held
        assert r.memory_total_bytes == 34359738368 // 2
        assert r.identity.model == "trainium" and r.identity.kind == "neuroncore"
        assert r.identity.vendor == "aws" and r.identity.physical and r.identity.price_units == 1.0
    assert readings[1].identity.parent == "neuron0"
    assert readings[1].identity.uuid == "i-0421ea5496c852415-nc1"
    hints = tracker.host_hints()
    assert hints is not None
    assert (hints.provider, hints.instance_type, hints.region, hints.zone) == (
        "aws",
        "trn1.2xlarge",
        "us-west-2",
        "us-west-2d",
    )


def test_trn1n_fixture_core_accounting() -> None:
    tracker = CoreTracker("host-b", min_period=0.5)
    record = parse_line(fixture("trn1n-32xlarge-one-runtime.json"))
    tracker.ingest(record)
    procs = FakeProcs(
        {457402: ProcessFacts(user="alice", command="python train.py", start_time_seconds=1.7e9, cgroup="0::/x")}
    )
    cores = by_core(tracker.readings(procs))
    assert sorted(cores) == list(range(32))  # 16 devices x 2 cores, old-style hardware info
    period = 4.999667932
    assert cores[6].utilization == pytest.approx(0.414)
    assert cores[6].busy_seconds == pytest.approx(period * 0.414)
    assert cores[6].covered_seconds == pytest.approx(period)
    held = {c for c, r in cores.items() if r.processes}
    # 0-1 hold memory, 6 is busy, 11 has the loaded model (device 5, local core 1); 2-5 and 7 are merely listed.
    assert held == {0, 1, 6, 11}
    for c in (0, 1):
        assert cores[c].utilization == 0.0
        assert cores[c].memory_used_bytes == 100752896 + 9912852
        (p,) = cores[c].processes
        assert (p.pid, p.runtime_tag, p.used_memory_bytes, p.user, p.command) == (
            457402,
            "367",
            110665748,
            "alice",
            "python train.py",
        )
    assert cores[6].processes[0].used_memory_bytes is None  # no per-core breakdown for core 6
    assert cores[6].memory_used_bytes is None
    for c in [2, 3, 4, 5, 7, *range(12, 32)]:
        assert cores[c].processes == () and cores[c].utilization == 0.0 and cores[c].memory_used_bytes == 0
    assert procs.calls == [457402]  # facts read once per pid per poll
    # Executions per period go to the runtime's first owned core (0); ECC to the device's first core.
    assert counters(cores[0])[("accel_neuron_execution_total", "completed")] == 2
    assert counters(cores[0])[("accel_neuron_execution_errors_total", "generic")] == 2
    assert counters(cores[0])[("accel_neuron_ecc_errors_total", "mem_corrected")] == 1
    assert counters(cores[2])[("accel_neuron_ecc_errors_total", "mem_corrected")] == 0  # device 1's first core
    assert counters(cores[1]) == {}
    assert cores[0].identity.model == "trainium"  # from the instance family: old hardware info has no type
    assert cores[31].identity.parent == "neuron15"
    # The vCPU group error is in the record for the source to count.
    assert len(record.errors) == 1


def test_counters_are_per_period_deltas_and_reset_per_poll() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    line = fixture("trn1n-32xlarge-one-runtime.json")
    for _ in range(3):
        tracker.ingest(parse_line(line))
    cores = by_core(tracker.readings(FakeProcs()))
    assert counters(cores[0])[("accel_neuron_execution_total", "completed")] == 6
    assert cores[6].busy_seconds == pytest.approx(3 * 4.999667932 * 0.414)
    assert cores[6].covered_seconds == pytest.approx(3 * 4.999667932)
    # No new record: zero busy and covered, last utilization carried, no counters.
    again = by_core(tracker.readings(FakeProcs()))
    assert again[6].busy_seconds == 0.0 and again[6].covered_seconds == 0.0
    assert again[6].utilization == pytest.approx(0.414)
    assert counters(again[0]) == {}
    assert len(again) == 32


def test_several_runtimes_on_one_core_take_the_max_not_the_average() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    # Runtime 10 saturates core 0 and holds it; runtimes 11 and 12 list core 0 at 0 %.
    tracker.ingest(
        parse_document(
            doc(
                [
                    rt(10, 5.0, {0: 100.0, 1: 0.0}, memory={0: 4096}),
                    rt(11, 5.0, {0: 0.0, 1: 30.0}, memory={1: 1024}),
                    rt(12, 5.0, {0: 0.0, 1: 60.0}, memory={1: 2048}),
                ]
            )
        )
    )
    cores = by_core(tracker.readings(FakeProcs()))
    assert cores[0].utilization == 1.0 and cores[0].busy_seconds == 5.0
    assert [p.pid for p in cores[0].processes] == [10]  # 11 and 12 merely list it
    assert cores[1].utilization == pytest.approx(0.6)
    assert [p.pid for p in cores[1].processes] == [12, 11]  # largest memory first
    assert cores[1].memory_used_bytes == 3072


def test_listing_alone_is_not_ownership_but_a_loaded_model_is() -> None:
    subgraph = {"sg_00": {"neuron_device_index": 1, "neuroncore_index": 0}}
    runtime = rt(20, 5.0, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    runtime["report"]["memory_used"] = {
        "period": 5.0,
        "loaded_models": [{"name": "m", "subgraphs": subgraph}],
        "error": "",
    }
    tracker = CoreTracker("h", min_period=0.5)
    tracker.ingest(parse_document(doc([runtime], devices=2, cores=2)))
    cores = by_core(tracker.readings(FakeProcs()))
    assert {c for c, r in cores.items() if r.processes} == {2}  # device 1, local core 0
    assert cores[2].processes[0].used_memory_bytes is None


def test_tiny_period_records_add_no_busy_time() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    tracker.ingest(parse_document(doc([rt(1, 0.004, {0: 90.0}, memory={0: 1})], period=0.004)))
    first = by_core(tracker.readings(FakeProcs()))
    assert first[0].covered_seconds == 0.0 and first[0].busy_seconds == 0.0
    assert first[0].utilization is None  # held and listed, but not measured yet
    assert first[1].utilization == 0.0  # nobody lists it: certainly idle
    assert first[0].processes[0].pid == 1
    tracker.ingest(parse_document(doc([rt(1, 5.0, {0: 40.0}, memory={0: 1})])))
    second = by_core(tracker.readings(FakeProcs()))
    assert second[0].busy_seconds == pytest.approx(2.0) and second[0].covered_seconds == 5.0


def test_runtime_error_and_group_error_make_busy_time_unknown() -> None:
    bad = rt(1, 5.0, {0: 80.0}, memory={0: 100})
    bad["error"] = "runtime unreachable"
    partial = rt(2, 5.0, {1: 50.0}, memory={1: 100})
    partial["report"]["neuroncore_counters"]["error"] = "counter read failed"
    tracker = CoreTracker("h", min_period=0.5)
    record = parse_document(doc([bad, partial]))
    assert tracker.ingest(record) == 2
    cores = by_core(tracker.readings(FakeProcs()))
    assert len(record.errors) == 2
    # A runtime never seen before could have run anywhere: no core's busy time is known.
    for core in cores.values():
        assert (core.busy_seconds, core.covered_seconds, core.unknown_seconds) == (0.0, 0.0, 5.0)
        assert core.utilization is None  # unknown, not 0 % (idle)
    # Runtime 2's counters are gone but its memory still proves it holds core 1.
    assert [p.pid for p in cores[1].processes] == [2]


def _core_41(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return doc([rt(1, 5.0, {0: 41.0, 1: 0.0}, memory={0: 100}, tag="serve"), *(extra or [])])


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda r: r.update(error="runtime crashed"), id="runtime-error"),
        pytest.param(lambda r: r["report"]["neuroncore_counters"].update(error="read failed"), id="counters-error"),
        pytest.param(lambda r: r["report"]["neuroncore_counters"].update(period="5s"), id="string-period"),
        pytest.param(
            lambda r: r["report"]["neuroncore_counters"]["neuroncores_in_use"]["0"].update(neuroncore_utilization="41"),
            id="string-utilization",
        ),
        pytest.param(
            lambda r: r["report"]["neuroncore_counters"]["neuroncores_in_use"]["0"].update(
                neuroncore_utilization=float("nan")
            ),
            id="nan",
        ),
        pytest.param(
            lambda r: r["report"]["neuroncore_counters"]["neuroncores_in_use"]["0"].update(
                neuroncore_utilization=float("inf")
            ),
            id="infinity",
        ),
    ],
)
def test_a_period_the_stream_cannot_vouch_for_is_neither_busy_nor_idle(spoil: Any) -> None:
    tracker = CoreTracker("h", min_period=0.5)
    assert tracker.ingest(parse_document(_core_41())) == 0
    known = by_core(tracker.readings(FakeProcs()))
    assert known[0].utilization == pytest.approx(0.41) and known[0].unknown_seconds == 0.0
    spoiled = _core_41()
    spoil(spoiled["neuron_runtime_data"][0])
    # Through JSON text, as the monitor writes it (NaN and Infinity are what Python's json emits).
    assert tracker.ingest(parse_line(json.dumps(spoiled))) >= 1
    core = by_core(tracker.readings(FakeProcs()))[0]
    assert core.busy_seconds == 0.0 and core.covered_seconds == 0.0 and core.unknown_seconds == 5.0
    assert core.utilization == pytest.approx(0.41)  # the last known value stands, not 0
    assert [p.pid for p in core.processes] == [1]  # still held
    # The next good record is measured again.
    tracker.ingest(parse_document(_core_41()))
    again = by_core(tracker.readings(FakeProcs()))[0]
    assert (again.busy_seconds, again.covered_seconds, again.unknown_seconds) == (pytest.approx(2.05), 5.0, 0.0)


def test_a_bad_value_on_one_core_leaves_the_others_measured() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    tracker.ingest(parse_document(doc([rt(1, 5.0, {0: "busy", 1: 60.0})], cores=3)))  # type: ignore[dict-item]
    cores = by_core(tracker.readings(FakeProcs()))
    assert cores[0].unknown_seconds == 5.0 and cores[0].covered_seconds == 0.0 and cores[0].utilization is None
    assert cores[1].busy_seconds == pytest.approx(3.0) and cores[1].covered_seconds == 5.0
    assert cores[2].utilization == 0.0 and cores[2].covered_seconds == 5.0  # nobody lists it


def test_unknown_periods_hold_the_state_and_are_not_charged_as_idle() -> None:
    """Tracker to ledger: an unknown period adds no state seconds, idle cost or waste; the state holds."""
    settings = AccountingSettings()
    ledger = Ledger(settings)
    identity = HostIdentity(provider="aws", instance_type="trn1.2xlarge", source="demo")
    context = HostContext(identity, PriceQuote(3.6, "config"), RuleAttributor(AttributionSettings(), ()))
    tracker = CoreTracker("h", min_period=0.5)

    def poll(document: dict[str, Any], now: float) -> None:
        tracker.ingest(parse_line(json.dumps(document)))
        report = SourceReport("neuron", tracker.readings(FakeProcs()), True, 0.0, now)
        ledger.ingest(report, context, now)

    idle = doc([rt(1, 5.0, {0: 0.0}, memory={0: 100})])  # held at 0 %: idle_held
    nan = doc([rt(1, 5.0, {0: float("nan")}, memory={0: 100})])
    poll(idle, 0.0)
    poll(idle, 5.0)
    before = ledger.snapshot(5.0).devices[0]
    assert before.state == IDLE_HELD
    poll(nan, 10.0)
    poll(nan, 15.0)
    after = ledger.snapshot(15.0).devices[0]
    assert after.state == IDLE_HELD  # held, not turned into anything by unknown data
    assert dict(after.state_seconds) == dict(before.state_seconds) == {IDLE_HELD: 5.0}
    assert after.idle_cost == before.idle_cost and after.waste == before.waste
    assert sum(v for _, v in after.cost) == pytest.approx(3.6 / 3600 * 15.0 / 2)  # money is still spent
    assert after.busy_seconds_total == 0.0
    # The same for a core that was active: an unknown period is not charged as idle either.
    busy = doc([rt(1, 5.0, {1: 90.0}, memory={1: 100})])
    poll(busy, 20.0)
    poll(doc([rt(1, 5.0, {1: float("inf")}, memory={1: 100})]), 25.0)
    core1 = ledger.snapshot(25.0).devices[1]
    assert core1.state == ACTIVE
    assert dict(core1.state_seconds) == {IDLE_FREE: 15.0, ACTIVE: 5.0}


def test_exact_integration_against_the_pattern() -> None:
    patterns = {1: Burst(on=0.7, period=2.0, value=0.9), 2: Schedule(((0.0, 0.2), (3.3, 1.0), (7.1, 0.0)), repeat=10.0)}
    host = NeuronHost(
        device_type="inferentia2",
        devices=2,
        cores_per_device=2,
        memory_per_device=32 * 2**30,
        runtimes=(
            NeuronRuntime(
                pid=1, tag="a", cores=(0, 1), utilization=patterns[1], memory_per_core=2**30, listed_cores=(2, 3)
            ),
            NeuronRuntime(
                pid=2, tag="b", cores=(2,), utilization=patterns[2], memory_per_core=2**30, listed_cores=(0, 1, 3)
            ),
            NeuronRuntime(pid=3, tag="c", cores=(0,), utilization=Constant(0.25), memory_per_core=2**29, start=4.0),
        ),
    )
    scenario = Scenario(name="t", description="", host=HostSettings(instance_type="inf2.24xlarge"), neuron=host)
    tracker = CoreTracker("h", min_period=0.5)
    bounds = [0.0, 0.00047, 1.3, 2.9, 4.0, 5.55, 7.2, 9.0, 11.25, 12.0]
    for index, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        tracker.ingest(parse_line(json.dumps(build_record(scenario, Window(a, b), index))))
    cores = by_core(tracker.readings(FakeProcs()))
    start = bounds[1]  # the tiny first record is not counted
    end = bounds[-1]
    assert cores[0].covered_seconds == pytest.approx(end - start, abs=1e-9)
    # Core 0: max of runtime 1 (burst) and runtime 3 (25 % from t=4) per window.
    expected0 = sum(
        max(patterns[1].busy(a, b), Constant(0.25).busy(max(a, 4.0), b) if b >= 4.0 else 0.0)
        for a, b in itertools.pairwise(bounds[1:])
    )
    assert cores[0].busy_seconds == pytest.approx(expected0, abs=1e-9)
    assert cores[1].busy_seconds == pytest.approx(patterns[1].busy(start, end), abs=1e-9)
    assert cores[2].busy_seconds == pytest.approx(patterns[2].busy(start, end), abs=1e-9)
    assert cores[3].busy_seconds == 0.0 and cores[3].processes == ()
    assert {p.pid for p in cores[0].processes} == {1, 3}


def test_model_and_hints_fallbacks() -> None:
    assert model_for("", "inf2.48xlarge") == "inferentia2"
    assert model_for("", "trn1n.32xlarge") == "trainium"
    assert model_for("", "trn2u.48xlarge") == "trainium2"
    assert model_for("", "inf1.xlarge") == "inferentia"
    assert model_for("", "") == "neuron"
    assert model_for("trainium2", "trn1.2xlarge") == "trainium2"
    assert host_hints(InstanceInfo(zone="eu-central-1a")).region == "eu-central-1"
    assert host_hints(InstanceInfo(zone="us-west-2-lax-1a")).region == "us-west-2"  # a Local Zone
    assert host_hints(InstanceInfo(zone="us-west-2-lax-1a", region="us-west-2")).region == "us-west-2"
    assert host_hints(InstanceInfo()).provider == ""


def test_no_hardware_info_means_no_readings() -> None:
    tracker = CoreTracker("h")
    tracker.ingest(parse_document({"neuron_runtime_data": [], "neuron_hardware_info": {"error": "driver not loaded"}}))
    assert not tracker.inventory_known
    assert tracker.readings(FakeProcs()) == ()


def test_uuid_falls_back_to_host_name_without_instance_id() -> None:
    tracker = CoreTracker("node-17")
    document = doc([])
    document["instance_info"] = {"instance_id": "", "error": "no IMDS"}
    tracker.ingest(parse_document(document))
    readings = tracker.readings(FakeProcs())
    assert readings[0].identity.uuid == "node-17-nc0"
    assert tracker.host_hints() is None


def test_the_first_tiny_capture_is_not_an_unknown_period() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    assert tracker.ingest(parse_document(doc([rt(1, 0.0005, {0: 30.0})], period=0.0005))) == 0
    core = by_core(tracker.readings(FakeProcs()))[0]
    assert core.unknown_seconds == 0.0 and core.covered_seconds == 0.0


def test_a_runtime_that_just_attached_is_not_an_unknown_period() -> None:
    tracker = CoreTracker("h", min_period=0.5)
    # Runtime 2 attached 3 ms before the line: its counters cover 3 ms of the 5 s period.
    line = doc([rt(1, 5.0, {0: 50.0}), rt(2, 0.003, {1: 90.0})])
    assert tracker.ingest(parse_document(line)) == 0
    cores = by_core(tracker.readings(FakeProcs()))
    assert cores[1].unknown_seconds == 0.0 and cores[1].covered_seconds == 5.0


def test_holders_follow_every_line_when_a_steady_host_repeats_its_shape() -> None:
    # A steady host repeats which runtimes hold which cores line after line; the tracker reuses
    # the last line's holders then, and must still see every change in memory, owners or listing.
    tracker = CoreTracker("h", min_period=0.5)
    steady = [rt(10, 5.0, {0: 50.0, 1: 0.0}, memory={0: 4096}), rt(11, 5.0, {0: 0.0, 1: 20.0}, memory={1: 1024})]

    def holders() -> dict[int, list[tuple[int, int | None]]]:
        cores = by_core(tracker.readings(FakeProcs()))
        return {c: [(p.pid, p.used_memory_bytes) for p in r.processes] for c, r in cores.items()}

    for util in (50.0, 75.0):  # the same shape twice, only the utilization moves
        steady[0]["report"]["neuroncore_counters"]["neuroncores_in_use"]["0"]["neuroncore_utilization"] = util
        tracker.ingest(parse_document(doc(steady)))
    assert holders() == {0: [(10, 4096)], 1: [(11, 1024)]}
    tracker.ingest(parse_document(doc([rt(10, 5.0, {0: 50.0, 1: 0.0}, memory={0: 8192}), steady[1]])))
    assert holders() == {0: [(10, 8192)], 1: [(11, 1024)]}  # the memory moved
    tracker.ingest(parse_document(doc([steady[0]])))
    assert holders() == {0: [(10, 4096)], 1: []}  # runtime 11 left
    tracker.ingest(parse_document(doc(steady, cores=4)))
    assert tracker.core_count == 4 and holders()[3] == []  # a bigger inventory: the same runtimes, more cores
    tracker.ingest(parse_document(doc([rt(10, 5.0, {0: 50.0, 1: 0.0}, memory={0: 4096}, tag="other"), steady[1]])))
    readings = tracker.readings(FakeProcs())
    assert [p.runtime_tag for p in by_core(readings)[0].processes] == ["other"]  # same pid, another runtime
