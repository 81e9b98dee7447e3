"""neuron_parse: fixture lines and generated edge cases through the pure line parser."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TESTS
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources.neuron_parse import ParseError, parse_document, parse_line

FIXTURES = TESTS / "fixtures" / "neuron-monitor"


def fixture_line(name: str) -> bytes:
    data = (FIXTURES / name).read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 1, "fixtures are one NDJSON line each"
    return data


def runtime(pid: int, report: dict[str, Any], tag: str | None = None, error: str = "") -> dict[str, Any]:
    return {"pid": pid, "neuron_runtime_tag": tag if tag is not None else str(pid), "error": error, "report": report}


def test_doc_example_full_schema() -> None:
    record = parse_line(fixture_line("doc-example.json"))
    assert record.hardware is not None
    assert (record.hardware.device_count, record.hardware.cores_per_device) == (16, 4)
    assert record.hardware.device_type == "trainium2"
    assert record.hardware.logical_core_config == 2
    assert record.hardware.device_memory_bytes == 103079215104
    (rt,) = record.runtimes
    assert (rt.pid, rt.tag) == (0, "my_app_1")
    assert rt.counters is not None
    assert {c.core: c.utilization_percent for c in rt.counters.cores} == {0: 42.01, 1: 42.02}
    assert rt.counters.cores[0].flops == 1234567891011
    assert rt.execution is not None
    assert dict(rt.execution.outcomes)["completed"] == 123
    assert rt.memory is not None
    assert rt.memory.device_bytes == 12519788544
    assert dict(rt.memory.per_core) == {0: 193986816 + 176285056 + 20971520, 1: 193986816 + 176285056 + 20971520}
    # Subgraph indices stay device-local in the parser: (device 12, local core 0).
    assert rt.memory.model_cores == ((12, 0),)
    assert record.errors == ()
    assert record.instance is not None and record.instance.instance_type == "trn2n.48xlarge"
    assert record.period() == pytest.approx(1.000113182)


def test_idle_trn1_2xlarge_has_no_runtime_and_a_tiny_period() -> None:
    record = parse_line(fixture_line("idle-trn1-2xlarge.json"))
    assert record.runtimes == ()
    assert record.hw_counters is None  # only memory_info is present
    assert record.hardware is not None and record.hardware.device_count * record.hardware.cores_per_device == 2
    assert record.period() == pytest.approx(0.00047258)
    assert record.instance is not None
    assert record.instance.instance_type == "trn1.2xlarge" and record.instance.name == ""


def test_trn1n_one_runtime_old_hardware_info_and_vcpu_error() -> None:
    record = parse_line(fixture_line("trn1n-32xlarge-one-runtime.json"))
    assert record.hardware is not None
    assert (record.hardware.device_count, record.hardware.cores_per_device, record.hardware.device_type) == (16, 2, "")
    (rt,) = record.runtimes
    assert (rt.pid, rt.tag) == (457402, "367")
    assert rt.counters is not None
    assert [c.core for c in rt.counters.cores] == list(range(8))
    assert {c.core: c.utilization_percent for c in rt.counters.cores}[6] == 41.4
    assert rt.execution is not None
    assert dict(rt.execution.outcomes)["completed"] == 2
    assert dict(rt.execution.errors)["generic"] == 2
    assert rt.memory is not None and rt.memory.model_cores == ((5, 1),)
    # The vCPU group has an error string: skipped and reported, never parsed.
    assert [e.message for e in record.errors] == ["open/proc/457402/stat:nosuchfileordirectory"]
    assert "neuron_runtime_vcpu_usage" in record.errors[0].where
    assert record.hw_counters is not None
    assert dict(record.hw_counters.devices[0].counts)["mem_corrected"] == 1


def test_str_and_bytes_give_the_same_record() -> None:
    line = fixture_line("trn1n-32xlarge-one-runtime.json")
    assert parse_line(line) == parse_line(line.decode())


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"   ",
        b"{",
        b'{"neuron_runtime_data": [',
        b"[1, 2]",
        b"null",
        b"42",
        b"\xff\xfe garbage",
        b"not json",
        b"[" * 100_000,
    ],
)
def test_malformed_lines_raise_parse_error(line: bytes) -> None:
    with pytest.raises(ParseError):
        parse_line(line)


def test_nulls_everywhere() -> None:
    document = {
        "neuron_runtime_data": [
            runtime(
                7,
                {
                    "neuroncore_counters": {"period": 5.0, "neuroncores_in_use": None, "error": ""},
                    "execution_stats": {
                        "period": 5.0,
                        "error_summary": None,
                        "execution_summary": None,
                        "latency_stats": {"total_latency": None, "device_latency": None},
                        "error": "",
                    },
                    "memory_used": {
                        "period": 5.0,
                        "neuron_runtime_used_bytes": None,
                        "loaded_models": None,
                        "error": "",
                    },
                },
            ),
            None,
            runtime(8, None),  # type: ignore[arg-type]
        ],
        "system_data": {
            "neuron_hw_counters": {"period": 5.0, "neuron_devices": None, "error": ""},
            "memory_info": None,
        },
        "instance_info": None,
        "neuron_hardware_info": None,
    }
    record = parse_document(document)
    assert [r.pid for r in record.runtimes] == [7, 8]
    rt = record.runtimes[0]
    assert rt.counters is not None and rt.counters.cores == ()
    assert rt.execution is not None and rt.execution.outcomes == () and rt.execution.errors == ()
    assert rt.memory is not None and rt.memory.per_core == () and rt.memory.model_cores == ()
    assert record.hw_counters is not None and record.hw_counters.devices == ()
    assert record.hardware is None and record.instance is None


def test_top_level_nulls_and_missing_groups() -> None:
    record = parse_line(json.dumps({"neuron_runtime_data": None, "system_data": None}))
    assert record.runtimes == () and record.period() is None and record.errors == ()
    assert parse_line("{}") == parse_line('{"unknown": {"deep": [1, 2, {"x": null}]}}')


def test_error_strings_at_runtime_group_and_hardware_level() -> None:
    document = {
        "neuron_runtime_data": [
            runtime(
                1,
                {"neuroncore_counters": {"period": 5, "neuroncores_in_use": {"0": {"neuroncore_utilization": 50}}}},
                error="runtime gone",
            ),
            runtime(
                2,
                {
                    "neuroncore_counters": {
                        "period": 5,
                        "neuroncores_in_use": {"1": {"neuroncore_utilization": 70}},
                        "error": "read failed",
                    },
                    "memory_used": {"period": 5, "neuron_runtime_used_bytes": {"neuron_device": 10}, "error": ""},
                },
            ),
        ],
        "system_data": {"neuron_hw_counters": {"period": 5, "neuron_devices": [], "error": "no device access"}},
        "neuron_hardware_info": {
            "neuron_device_count": 1,
            "neuroncore_per_device_count": 2,
            "error": "driver not loaded",
        },
    }
    record = parse_document(document)
    # The errored runtime is dropped (and named); the errored counters of runtime 2 carry no data
    # (their busy time is unknown), its memory is kept.
    assert [r.pid for r in record.runtimes] == [2]
    assert record.failed_runtimes == ((1, "1"),)
    assert record.runtimes[0].counters is not None
    assert record.runtimes[0].counters.period is None and record.runtimes[0].counters.cores == ()
    assert record.runtimes[0].memory is not None
    assert record.hw_counters is None
    assert record.hardware is None
    assert sorted(e.message for e in record.errors) == [
        "driver not loaded",
        "no device access",
        "read failed",
        "runtime gone",
    ]


def test_old_names_inference_stats_and_summary() -> None:
    report = {
        "inference_stats": {
            "period": 5.0,
            "error_summary": {"generic": 1, "numerical": 0},
            "inference_summary": {"completed": 9, "timed_out": 1},
            "error": "",
        },
        "neuroncore_counters": {
            "period": 5.0,
            "neuroncores_in_use": {"0": {"neuroncore_utilization": 12.5}},
            "error": "",
        },
    }
    record = parse_document({"neuron_runtime_data": [runtime(3, report, tag="legacy")]})
    rt = record.runtimes[0]
    assert rt.execution is not None
    assert dict(rt.execution.outcomes) == {"completed": 9, "timed_out": 1}
    assert dict(rt.execution.errors) == {"generic": 1, "numerical": 0}


def test_bad_values_are_unknown_not_fatal() -> None:
    report = {
        "neuroncore_counters": {
            "period": "5s",
            "neuroncores_in_use": {
                "0": {"neuroncore_utilization": 150},
                "1": {"neuroncore_utilization": -3},
                "2": {"neuroncore_utilization": "high"},
                "x": {"neuroncore_utilization": 10},
                "3": None,
            },
        },
        "execution_stats": {
            "execution_summary": {"completed": True, "timed_out": -1, "failed_to_queue": 2.0, "brand_new": 5}
        },
    }
    rt = parse_document({"neuron_runtime_data": [runtime(4, report)]}).runtimes[0]
    assert rt.counters is not None
    assert rt.counters.period is None
    # Far outside 0-100, not a number, or no object at all: unknown, never 0 % (idle).
    assert {c.core: c.utilization_percent for c in rt.counters.cores} == {0: None, 1: None, 2: None, 3: None}
    assert rt.execution is not None and dict(rt.execution.outcomes) == {"failed_to_queue": 2}


def test_unknown_keys_v3d_and_k8s_info_are_ignored() -> None:
    line = fixture_line("doc-example.json")
    document = json.loads(line)
    document["brand_new_group"] = {"error": "", "values": [1, 2, 3]}
    document["neuron_runtime_data"][0]["report"]["neuroncore_counters"]["neuroncores_in_use"]["0"][
        "effective_flops"
    ] = 1
    assert parse_document(document) == parse_line(line)


def test_two_megabyte_line_parses() -> None:
    document = json.loads(fixture_line("trn1n-32xlarge-one-runtime.json"))
    document["padding"] = "x" * (2 * 2**20)
    line = json.dumps(document).encode()
    assert len(line) > 2 * 2**20
    record = parse_line(line)
    assert record.runtimes[0].pid == 457402


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "neuron_runtime_data",
                        "report",
                        "system_data",
                        "neuron_hardware_info",
                        "error",
                        "period",
                        "neuroncores_in_use",
                        "0",
                        "pid",
                        "memory_used",
                        "neuron_hw_counters",
                        "neuron_devices",
                        "loaded_models",
                        "subgraphs",
                        "x",
                    ]
                ),
                c,
                max_size=5,
            )
        ),
        max_leaves=30,
    )
)
def test_any_json_value_gives_a_record_or_parse_error(value: Any) -> None:
    try:
        line = json.dumps(value)
    except ValueError:
        return
    try:
        parse_line(line)
    except ParseError:
        assert not isinstance(value, dict)


def test_instance_info_error_keeps_the_filled_fields_and_is_not_counted() -> None:
    document = {"instance_info": {"instance_type": "inf2.xlarge", "instance_id": "", "error": "IMDS unreachable"}}
    record = parse_document(document)
    assert record.instance is not None and record.instance.instance_type == "inf2.xlarge"
    assert record.errors == ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("41.4", 41.4),
        ("100.0001", 100.0),  # monitor rounding: clamped
        ("-0.0001", 0.0),
        ("0", 0.0),
        ("NaN", None),  # used to be 0 %
        ("Infinity", None),  # used to be 100 %
        ("-Infinity", None),
        ('"41.4"', None),  # a string for a number used to be 0 %
        ("null", None),
        ("true", None),
        ("{}", None),
        ("250", None),
    ],
)
def test_utilization_values_the_stream_cannot_vouch_for_are_unknown(raw: str, expected: float | None) -> None:
    line = (
        '{"neuron_runtime_data": [{"pid": 7, "report": {"neuroncore_counters": {"period": 5.0,'
        f' "neuroncores_in_use": {{"0": {{"neuroncore_utilization": {raw}}}, "1": {{}}}}}}}}}}]}}'
    )
    record = parse_line(line)
    rt = record.runtimes[0]
    assert rt.counters is not None
    assert dict((c.core, c.utilization_percent) for c in rt.counters.cores) == {0: expected, 1: None}
    assert record.bad_values == (2 if expected is None else 1)


def test_failed_runtimes_and_counter_groups_are_named() -> None:
    failed = {"pid": 9, "neuron_runtime_tag": "serve", "error": "lost contact with the runtime"}
    partial = runtime(10, {"neuroncore_counters": {"period": 5.0, "error": "counters unreadable"}})
    record = parse_document({"neuron_runtime_data": [failed, partial]})
    assert record.failed_runtimes == ((9, "serve"),)
    counters = record.runtimes[0].counters
    assert counters is not None and counters.period is None and counters.cores == ()
    assert len(record.errors) == 2 and record.bad_values == 0
