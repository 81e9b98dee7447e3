"""Executable shell wrappers that run one of the simulator's fake tools with a scenario.

The exporter runs tools such as neuron-monitor and scontrol as executables; the wrapper is that
executable, so the demo and the tests go through the same subprocess code as production.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def write_wrapper(directory: Path, name: str, module: str, scenario: str) -> Path:
    """Write `directory/name`, a shell script running `python -m module --scenario scenario "$@"`.

    Returns its absolute path. A scenario given as a file path is made absolute, so the wrapper
    works from any working directory.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if Path(scenario).is_file():
        scenario = str(Path(scenario).resolve())
    package_root = Path(__file__).resolve().parents[2]
    wrapper = directory / name
    wrapper.write_text(
        "#!/bin/sh\n"
        f"# Simulated {name} for accel-cost-exporter ({module}).\n"
        f"PYTHONPATH={shlex.quote(str(package_root))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} -m {module} --scenario {shlex.quote(scenario)} "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return wrapper
