"""Configuration validation and the command line: clear one-line errors, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import build_parser, main, options_from_args
from exporter.config import ConfigInvalid, load_config, parse_config, parse_duration
from exporter.environment import ENVIRONMENT

# --- the YAML configuration ------------------------------------------------------------------


def test_defaults_when_no_file() -> None:
    config = load_config(None)
    assert config.accounting.idle_threshold == pytest.approx(0.01)
    assert config.accounting.target_utilization == pytest.approx(0.8)


def test_valid_document_is_read() -> None:
    config = parse_config(
        {
            "accounting": {"idle_threshold": 0.05, "target_utilization": 0.6},
            "pricing": {"instance_types": {"p4d.24xlarge": 20.0}},
        }
    )
    assert config.accounting.idle_threshold == pytest.approx(0.05)
    assert config.accounting.target_utilization == pytest.approx(0.6)
    assert dict(config.pricing.instance_types) == {"p4d.24xlarge": 20.0}


@pytest.mark.parametrize(
    ("document", "key", "expected", "found"),
    [
        ({"accounting": {"idle_threshold": 2}}, "accounting.idle_threshold", "a number from 0 to 1", "2"),
        ({"accounting": {"idle_threshold": "low"}}, "accounting.idle_threshold", "a number", "'low'"),
        ({"accounting": {"target_utilization": 0}}, "accounting.target_utilization", "a number from 0.01", "0"),
        ({"accounting": {"export_processes": "yes"}}, "accounting.export_processes", "true or false", "'yes'"),
        (
            {"accounting": {"max_processes_per_device": 1.5}},
            "accounting.max_processes_per_device",
            "a whole number",
            "1.5",
        ),
        ({"pricing": {"instance_types": {"p4d.24xlarge": -1}}}, "pricing.instance_types.p4d.24xlarge", "a price", "-1"),
        ({"pricing": {"split": "half"}}, "pricing.split", "one of 'even', 'opencost'", "'half'"),
        ({"pricing": {"refresh_interval": "soon"}}, "pricing.refresh_interval", "a duration", "'soon'"),
        ({"host": {"lifecycle": "forever"}}, "host.lifecycle", "one of", "'forever'"),
        ({"accounting": [1, 2]}, "accounting", "a mapping", "[1, 2]"),
        ({"neuron": {"period": "0s"}}, "neuron.period", "a duration", "'0s'"),
    ],
)
def test_bad_value_names_key_expected_and_found(document: object, key: str, expected: str, found: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(document, source="test.yml")
    assert len(info.value.errors) == 1, info.value.errors
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("test.yml: ")
    assert f"'{key}'" in message
    assert f"expected {expected}" in message
    assert f"found {found}" in message


def test_unknown_key_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"accounting": {"idle_treshold": 0.1}})
    (error,) = info.value.errors
    assert "'accounting.idle_treshold'" in error
    assert "unknown key" in error
    assert "idle_threshold" in error  # the fix is in the message


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"acounting": {}})
    assert info.value.errors == [info.value.errors[0]]
    assert "'acounting'" in info.value.errors[0]


def test_every_error_is_listed_at_once() -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"accounting": {"idle_threshold": 5, "target_utilization": 9}, "bogus": 1})
    keys = " ".join(info.value.errors)
    assert len(info.value.errors) == 3
    for key in ("accounting.idle_threshold", "accounting.target_utilization", "bogus"):
        assert f"'{key}'" in keys


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="file not found"):
        load_config(str(tmp_path / "missing.yml"))
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("accounting: [\n")
    with pytest.raises(ConfigInvalid, match=r"not valid YAML at line \d+"):
        load_config(str(bad_yaml))
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigInvalid, match="not UTF-8"):
        load_config(str(binary))


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yml"
    twice.write_text("accounting:\n  idle_threshold: 0.1\nhost: {}\naccounting:\n  target_utilization: 0.5\n")
    with pytest.raises(ConfigInvalid, match=r"duplicate key 'accounting' at lines 1 and 4"):
        load_config(str(twice))
    nested = tmp_path / "nested.yml"
    nested.write_text("attribution:\n  rules:\n    - {match: {user: a}, team: x, team: y}\n")
    with pytest.raises(ConfigInvalid, match=r"duplicate key 'team' at lines 3 and 3"):
        load_config(str(nested))
    merged = tmp_path / "merged.yml"  # a merge key's values may be overridden: that is not a duplicate
    merged.write_text("host:\n  tags: &t {Team: a}\naccounting: {}\n")
    assert dict(load_config(str(merged)).host.tags) == {"Team": "a"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("1.5m", 90.0), ("2h", 7200.0), ("1d", 86400.0), (3, 3.0), ("7", 7.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 weeks", "-1s", True, None, float("nan"), "s5"])
def test_parse_duration_rejects(text: object) -> None:
    assert parse_duration(text) is None


# --- flags, in process -------------------------------------------------------------------------


def test_flag_values_are_validated_with_the_flag_name() -> None:
    parser = build_parser()
    for argv, flag in (
        (["--collector.interval", "50ms"], "--collector.interval"),
        (["--collector.interval", "2h"], "--collector.interval"),
        (["--web.listen-address", "localhost"], "--web.listen-address"),
        (["--web.listen-address", ":99999"], "--web.listen-address"),
        (["--web.telemetry-path", "metrics"], "--web.telemetry-path"),
        (["--web.telemetry-path", "/-/ready"], "--web.telemetry-path"),
        (["--neuron.monitor-path", "neuron-monitor"], "--neuron.monitor-path"),
    ):
        with pytest.raises(ValueError) as info:
            options_from_args(parser.parse_args(argv))
        assert str(info.value).startswith(flag + ":"), str(info.value)


def test_environment_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL_COLLECTOR_INTERVAL", "30s")
    monkeypatch.setenv("ACCEL_WEB_LISTEN_ADDRESS", "127.0.0.1:1, 127.0.0.1:2")
    options = options_from_args(build_parser().parse_args([]))
    assert options.interval == 30.0
    assert options.listen_addresses == ("127.0.0.1:1", "127.0.0.1:2")
    # A flag beats the environment.
    options = options_from_args(build_parser().parse_args(["--collector.interval", "1s"]))
    assert options.interval == 1.0


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_an_empty_variable_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for other in ENVIRONMENT:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "")
    assert main(["--check-config"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"accel-cost-exporter: error: {name}: ")


@pytest.mark.parametrize(
    ("value", "expected"), [("off", False), ("FALSE", False), ("0", False), ("on", True), ("Yes", True), ("1", True)]
)
def test_boolean_variables_take_the_usual_words(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("ACCEL_COLLECTOR_NVML", value)
    monkeypatch.setenv("ACCEL_COLLECTOR_NEURON", value)
    options = options_from_args(build_parser().parse_args([]))
    assert options.collectors == {"nvml": expected, "neuron": expected}


def test_an_unknown_word_never_turns_a_collector_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL_COLLECTOR_NVML", "enabled")
    assert "nvml" not in options_from_args(build_parser().parse_args([])).collectors  # main() refuses it
