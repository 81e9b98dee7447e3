"""The suite's own guard: a missing external tool stops the run with one message; under CI a skip fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import EXTERNAL_TOOLS, OPTIONAL_TOOLS_ENV, TESTS


def _suite(tmp_path: Path, body: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run pytest on one small test file beside a copy of this suite's conftest."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _path_without_tools(tmp_path: Path) -> str:
    """A PATH that holds the interpreter's folder and nothing the suite looks for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", OPTIONAL_TOOLS_ENV)}
    env.update(extra)
    return env


def test_a_missing_tool_stops_the_run_with_one_message(tmp_path: Path) -> None:
    result = _suite(tmp_path, "def test_x():\n    assert True\n", _env(PATH=_path_without_tools(tmp_path)))
    assert result.returncode == 4, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "missing tools:" in out
    for name in EXTERNAL_TOOLS:
        assert name in out
    assert "apt-get install" in out and "prometheus-alertmanager" in out
    assert "1 passed" not in out


def test_optional_tools_let_a_developer_run_a_subset(tmp_path: Path) -> None:
    env = _env(PATH=_path_without_tools(tmp_path), **{OPTIONAL_TOOLS_ENV: "optional"})
    result = _suite(tmp_path, "def test_x():\n    assert True\n", env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_ci_refuses_the_opt_out(tmp_path: Path) -> None:
    env = _env(PATH=_path_without_tools(tmp_path), CI="true", **{OPTIONAL_TOOLS_ENV: "optional"})
    result = _suite(tmp_path, "def test_x():\n    assert True\n", env)
    assert result.returncode == 4
    assert "missing tools:" in result.stdout + result.stderr


def test_under_ci_a_skip_is_a_failure(tmp_path: Path) -> None:
    body = "import pytest\n\n@pytest.mark.skip(reason='tool gone')\ndef test_x():\n    pass\n"
    result = _suite(tmp_path, body, _env(CI="true"))
    assert result.returncode == 1, result.stdout + result.stderr
    # A marker skips in setup, so pytest counts it as an error; either way the run is red.
    assert "skipped under CI=true" in result.stdout and "tool gone" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path) -> None:
    body = "import pytest\n\n@pytest.mark.skip(reason='tool gone')\ndef test_x():\n    pass\n"
    result = _suite(tmp_path, body, _env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
