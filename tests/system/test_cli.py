"""The real command line, as a subprocess: one-line errors naming the flag, variable or key, exit
status 2, no traceback. These start a Python per case, so they run in `make test`, not test-fast."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from exporter.cli import build_parser
from exporter.environment import ENVIRONMENT
from exporter.sim.scenario import builtin_scenarios, load_scenario

# --- the real command line, as a subprocess -----------------------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def test_cli_unknown_flag() -> None:
    line = assert_one_line_error(run_cli("--no-such-flag"))
    assert "--no-such-flag" in line


def test_cli_bad_flag_value() -> None:
    line = assert_one_line_error(run_cli("--collector.interval", "fast"))
    assert "--collector.interval" in line and "'fast'" in line


def test_cli_interval_needs_a_unit_like_prometheus_flags() -> None:
    line = assert_one_line_error(run_cli("--collector.interval", "5", "--check-config"))
    assert "give a unit, e.g. '5s'" in line
    assert run_cli("--collector.interval", "5s", "--check-config").returncode == 0


def test_cli_bad_log_level() -> None:
    line = assert_one_line_error(run_cli("--log.level", "loud"))
    assert "--log.level" in line


def test_cli_bad_config_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("accounting:\n  target_utilization: 3\n")
    line = assert_one_line_error(run_cli("--config.file", str(bad), "--check-config"))
    assert str(bad) in line
    assert "'accounting.target_utilization'" in line
    assert "expected a number from 0.01 to 1" in line
    assert "found 3" in line


def test_cli_bad_config_file_refused_before_listening(tmp_path: Path) -> None:
    # Without --check-config the daemon must still refuse before it binds anything.
    bad = tmp_path / "bad.yml"
    bad.write_text("pricing:\n  instance_types: {p4d.24xlarge: free}\n")
    line = assert_one_line_error(run_cli("--config.file", str(bad), "--web.listen-address", "127.0.0.1:0"))
    assert "'pricing.instance_types.p4d.24xlarge'" in line


def test_cli_several_errors_are_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("accounting:\n  idle_threshold: 2\n  bogus: 1\n")
    result = run_cli("--config.file", str(bad), "--check-config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'accounting.idle_threshold'" in result.stderr
    assert "'accounting.bogus'" in result.stderr


def test_cli_missing_and_malformed_config(tmp_path: Path) -> None:
    line = assert_one_line_error(run_cli("--config.file", str(tmp_path / "nope.yml"), "--check-config"))
    assert "file not found" in line
    malformed = tmp_path / "malformed.yml"
    malformed.write_text("accounting: {idle_threshold: 0.1\n")
    line = assert_one_line_error(run_cli("--config.file", str(malformed), "--check-config"))
    assert "not valid YAML" in line


def test_cli_check_config_ok(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("accounting:\n  idle_threshold: 0.05\npricing:\n  instance_types: {p4d.24xlarge: 20}\n")
    result = run_cli("--config.file", str(good), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_check_config_with_demo_scenario() -> None:
    result = run_cli("--demo", "a100-mig", "--check-config")
    assert result.returncode == 0, result.stderr
    line = assert_one_line_error(run_cli("--demo", "no-such-scenario", "--check-config"))
    assert "no-such-scenario" in line and "p4d-idle-fleet" in line


def test_cli_version() -> None:
    from exporter import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"accel-cost-exporter {__version__}"


def test_cli_demo_list() -> None:
    result = run_cli("--demo", "list")
    assert result.returncode == 0, result.stderr
    entries: dict[str, str] = {}
    current = ""
    for line in result.stdout.splitlines():
        if line.startswith(" "):  # a wrapped description goes on, indented
            entries[current] += " " + line.strip()
        elif line.strip():
            current, _, first = line.partition(" ")
            entries[current] = first.strip()
    assert list(entries) == builtin_scenarios()
    assert {"p4d-idle-fleet", "a100-mig", "g6-inference", "trn1-training"} <= set(entries)
    for name, text in entries.items():  # whole descriptions, never cut mid-word
        assert text == " ".join(load_scenario(name).description.split())
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


# --- ACCEL_* environment variables: refused like a bad flag ----------------------------------------

BOOLEAN_WORDS = "expected one of true, false, 1, 0, yes, no, on, off"
# One bad value per variable, and what the message must say is expected.
BAD_ENVIRONMENT = {
    "ACCEL_WEB_LISTEN_ADDRESS": ("bogus", "expected host:port or :port"),
    "ACCEL_WEB_TELEMETRY_PATH": ("metrics", "expected a path starting with '/'"),
    "ACCEL_WEB_CONFIG_FILE": ("/no/such/web-config.yml", "expected the path of an existing file"),
    "ACCEL_CONFIG_FILE": ("/no/such/config.yml", "expected the path of an existing file"),
    "ACCEL_COLLECTOR_INTERVAL": ("fast", "expected a duration from 100ms to 1h"),
    "ACCEL_COLLECTOR_NVML": ("enabled", BOOLEAN_WORDS),
    "ACCEL_COLLECTOR_NEURON": ("auto", BOOLEAN_WORDS),
    "ACCEL_NEURON_MONITOR_PATH": ("neuron-monitor", "expected an absolute path"),
    "ACCEL_STATE_DIRECTORY": (str(ROOT / "pyproject.toml"), "expected a directory"),
    "ACCEL_LOG_LEVEL": ("verbose", "expected one of debug, error, info, warn"),
    "ACCEL_LOG_FORMAT": ("xml", "expected one of logfmt, json"),
    "ACCEL_DEMO": ("no-such-scenario", "one of: a100-mig, g6-inference"),
}


def test_every_variable_in_help_is_checked_and_tested() -> None:
    documented = set(re.findall(r"ACCEL_[A-Z_]+[A-Z]", build_parser().format_help()))
    assert documented == set(ENVIRONMENT) == set(BAD_ENVIRONMENT)


@pytest.mark.parametrize("name", sorted(BAD_ENVIRONMENT))
def test_cli_bad_environment_value_is_refused_like_a_bad_flag(name: str) -> None:
    value, expected = BAD_ENVIRONMENT[name]
    line = assert_one_line_error(run_cli("--check-config", env={name: value}))
    assert line.startswith(f"accel-cost-exporter: error: {name}: "), line
    assert expected in line and value in line


def test_an_unknown_accel_variable_is_named_in_a_warning() -> None:
    result = run_cli("--check-config", env={"ACCEL_COLLECTOR_INTERVALL": "5s", "ACCEL_SIM_SCENARIO": "inf2-inference"})
    assert result.returncode == 0, result.stderr
    assert "ACCEL_COLLECTOR_INTERVALL" in result.stderr and "ACCEL_COLLECTOR_INTERVAL," in result.stderr
    assert "ACCEL_SIM_SCENARIO" not in result.stderr  # the simulator's own variable
