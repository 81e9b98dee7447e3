"""The systemd unit: `systemd-analyze verify` passes and the security exposure stays at or below 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from exporter.web.connections import MAX_CONNECTIONS, connection_cap

UNIT = ROOT / "systemd" / "accel-cost-exporter.service"
DEFAULTS = ROOT / "systemd" / "accel-cost-exporter.default"
EXEC = "/opt/accel-cost-exporter/bin/accel-cost-exporter"
MAX_EXPOSURE = 2.0

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def settings(path: Path) -> list[tuple[str, str]]:
    """(key, value) for every assignment in the unit, in order (keys repeat)."""
    pairs = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """A copy whose ExecStart names a binary that exists here (verify checks it)."""
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} $ARGS" in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={EXEC}", "ExecStart=/bin/true"))
    return copy


@needs_systemd
def test_systemd_analyze_verify(runnable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(runnable_unit)], capture_output=True, text=True, timeout=60, check=False
    )
    ours = [line for line in result.stderr.splitlines() if runnable_unit.name in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


@needs_systemd
def test_security_exposure_at_most_2(runnable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(runnable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, verdict = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security exposure: {score} {verdict}")
    assert score <= MAX_EXPOSURE, result.stdout
    assert result.returncode == 0  # --threshold is on a 0-100 scale: 20 means 2.0


def test_unit_settings() -> None:
    pairs = settings(UNIT)
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    one = {key: vals[-1] for key, vals in values.items()}
    assert one["DynamicUser"] == "yes"
    assert values["EnvironmentFile"] == ["-/etc/default/accel-cost-exporter"]  # '-': optional file
    assert one["StateDirectory"] == "accel-cost-exporter"
    assert one["DevicePolicy"] == "closed"
    assert set(values["DeviceAllow"]) == {"char-nvidia* rw", "/dev/nvidiactl rw", "char-neuron* rw"}
    assert "PrivateDevices" not in one  # its minimal /dev has no /dev/nvidia* and NVML fails
    assert one["SupplementaryGroups"] == "video"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert values["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert one["UMask"] == "0077"
    assert one["Restart"] == "on-failure"
    # The default soft limit (1024) would cap HTTP connections at 704; the unit allows the full cap.
    assert connection_cap(int(one["LimitNOFILE"])) == MAX_CONNECTIONS


def test_default_file_sets_args_for_a_shell(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", "-c", f'set -e; . "{DEFAULTS}"; printf %s "$ARGS"'],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert result.stdout.startswith("--web.listen-address=:11094")
    # systemd's EnvironmentFile syntax: only comments, blank lines and KEY=value lines.
    for line in DEFAULTS.read_text().splitlines():
        assert not line.strip() or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line), line
