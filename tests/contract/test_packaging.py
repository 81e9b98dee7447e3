"""The install the README describes: build the sdist and wheel, check them, install the wheel into a
clean virtualenv outside the checkout, and run it there (--version, --check-config, a --demo scrape)."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, http_get, pick_free_port

from exporter import __version__

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return out


def test_sdist_and_wheel_build_and_pass_twine_check(dist: Path) -> None:
    wheels = list(dist.glob(f"accel_cost_exporter-{__version__}-py3-none-any.whl"))
    sdists = list(dist.glob(f"accel_cost_exporter-{__version__}.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    twine = Path(sys.executable).parent / "twine"
    checked = _run([str(twine), "check", "--strict", str(wheels[0]), str(sdists[0])], cwd=dist)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    for needed in (
        "exporter/py.typed",
        "exporter/context/price/price_table.json",
        "exporter/sim/demo-config.yaml",
        "exporter/sim/onprem-slurm-config.yaml",  # a built-in scenario's demo_config
        "exporter/sim/scenarios/p4d-idle-fleet.yaml",
    ):
        assert needed in names, f"{needed} is missing from the wheel"
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_wheel_installs_into_a_clean_virtualenv_and_runs(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    wheel = next(dist.glob("*.whl"))
    installed = _run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    command = str(venv / "bin" / "accel-cost-exporter")

    version = _run([command, "--version"], cwd=tmp_path, timeout=60)
    assert version.returncode == 0 and __version__ in version.stdout + version.stderr

    config = tmp_path / "config.yml"
    config.write_text("accounting:\n  idle_threshold: 0.02\n")
    checked = _run([command, "--check-config", "--config.file", str(config)], cwd=tmp_path, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port = pick_free_port()
    proc = subprocess.Popen(
        [command, "--demo", "--web.listen-address", f"127.0.0.1:{port}", "--collector.interval", "1s"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "accel_device_up{" not in body:
            try:
                body = http_get(f"http://127.0.0.1:{port}/metrics").body.decode()
            except OSError:
                time.sleep(0.2)  # not listening yet: poll again
        assert "accel_device_up{" in body
        # The installed copy serves, not the checkout: its module lives in the virtualenv.
        where = _run(
            [str(venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"], cwd=tmp_path, timeout=60
        )
        assert str(venv) in where.stdout
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr
