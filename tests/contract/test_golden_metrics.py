"""The golden /metrics of every built-in scenario (tests/golden/) is what the exporter renders now,
and the check names a stale, missing or orphaned file and how to regenerate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

GENERATOR = ROOT / "tests" / "golden" / "generate.py"
REGENERATE = "python tests/golden/generate.py (or make golden)"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    """The generator as `make lint` runs it: a real process, from the repository root."""
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_every_scenario_matches_its_golden_file() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_the_check_names_each_problem_and_the_fix(tmp_path: Path) -> None:
    golden = tmp_path / "golden"
    shutil.copytree(ROOT / "tests" / "golden", golden, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    stale = golden / "p4d-idle-fleet.prom"
    stale.write_text(
        stale.read_text().replace('accel_device_up{device="nvidia0"} 1.0', 'accel_device_up{device="nvidia0"} 0.0')
    )
    (golden / "g6-inference.prom").unlink()
    (golden / "retired-scenario.prom").write_text("# an old scenario\n")
    result = run_generator("--check", "--directory", str(golden))
    assert result.returncode == 1
    assert f"{stale} is stale: /metrics of --demo p4d-idle-fleet changed" in result.stderr
    assert f"{golden / 'g6-inference.prom'} is missing (a new scenario)" in result.stderr
    assert f"{golden / 'retired-scenario.prom'} has no scenario any more: delete it" in result.stderr
    assert result.stderr.strip().endswith(f"review the change, then regenerate: {REGENERATE}")
    assert "a100-mig" not in result.stderr  # the others are fine


def test_regenerating_writes_what_the_check_expects(tmp_path: Path) -> None:
    result = run_generator("--directory", str(tmp_path), "g6-inference")
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "g6-inference.prom").read_text()
    assert written == (ROOT / "tests" / "golden" / "g6-inference.prom").read_text()
    assert 'accel_exporter_build_info{version="<version>"} 1.0' in written
    assert run_generator("--check", "--directory", str(tmp_path), "g6-inference").returncode == 0
