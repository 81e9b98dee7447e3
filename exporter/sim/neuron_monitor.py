"""A fake `neuron-monitor` driven by a scenario's `neuron:` section.

    python -m exporter.sim.neuron_monitor -c CONFIG [--scenario NAME_OR_PATH] [--verbose N]

It behaves like the real tool where the exporter cares: one compact JSON document per line on
stdout, the first one right away with a tiny `period`, then one every configured period (root
`period` of the config file, default 5s); chatter on stderr. Each line covers the window since
the previous one and reports, per runtime and core, utilization = busy(window) / window exactly
from the scenario pattern, so `period x utilization` integrates to the pattern's true busy time.

The scenario comes from `--scenario` or the environment variable ACCEL_SIM_SCENARIO. Scenario
time is wall time since this process started, plus ACCEL_SIM_TIME_OFFSET seconds if set.

Faults (`neuron.faults`): `crash_after_lines` exits with status 1 after that many records;
`garbage_every` adds a malformed line after every Nth record; `oversized_every` pads every Nth
record to `oversized_bytes` with an unknown key; `error_every` sets an `error` string (and a
null `neuron_devices`) on every Nth record's `neuron_hw_counters` group.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config.reader import ConfigInvalid, parse_duration
from exporter.sim.scenario import NeuronHost, NeuronRuntime, Scenario, load_scenario
from exporter.sim.wrapper import write_wrapper
from exporter.sources.procfs import ProcessFacts

SCENARIO_ENV = "ACCEL_SIM_SCENARIO"
OFFSET_ENV = "ACCEL_SIM_TIME_OFFSET"
# Real first captures measured 0.47 ms to 14 ms.
FIRST_PERIOD = 0.00047258
DEFAULT_PERIOD = 5.0
_PROG = "neuron-monitor (simulated)"

_VERSIONS = {
    "inferentia": ("v1", "v1", 1),
    "inferentia2": ("v2", "v2", 1),
    "trainium": ("v2", "v2", 1),
    "trainium2": ("v4", "v3d", 2),
    "trainium3": ("v5", "v4", 2),
}
_GARBAGE: tuple[bytes, ...] = (
    b'{"neuron_runtime_data": [{"pid": 1, "report": {"neuroncore_coun',
    b"neuron-monitor: not json at all",
    b"\xff\xfe\x00garbage \xc3\x28",
    b"[1, 2, 3]",
)


@dataclass(frozen=True)
class Window:
    """The scenario-time interval one record covers."""

    start: float
    end: float

    @property
    def length(self) -> float:
        """Seconds covered."""
        return self.end - self.start


def _events(rate: float, since: float, a: float, b: float) -> int:
    """Whole events in (a, b] of a steady `rate` that began at `since` (exact over many windows)."""
    if rate <= 0 or b <= since:
        return 0
    return math.floor(rate * (b - since)) - math.floor(rate * max(0.0, a - since))


def _active(rt: NeuronRuntime, t: float) -> bool:
    return rt.start <= t and (rt.end is None or t < rt.end)


def runtime_report(rt: NeuronRuntime, host: NeuronHost, window: Window) -> dict[str, Any]:
    """One `neuron_runtime_data[]` entry for `rt` over `window` (the runtime must be active at its end)."""
    a = max(window.start, rt.start)
    b = window.end
    period = window.length
    busy = rt.utilization.busy(a, b) if b > a else 0.0
    util = min(100.0, 100.0 * busy / period) if period > 0 else 0.0
    cores: dict[str, Any] = {str(c): {"neuroncore_utilization": 0} for c in rt.listed_cores}
    for core in rt.cores:
        cores[str(core)] = {"neuroncore_utilization": util, "flops": int(util * 1e10)}
    completed = _events(rt.executions_per_second, rt.start, a, b)
    failed = _events(rt.errors_per_second, rt.start, a, b)
    latency: dict[str, Any] = {"total_latency": None, "device_latency": None}
    if completed:
        base = 0.5 / max(rt.executions_per_second, 1.0)
        percentiles = (("p0", 0.5), ("p1", 0.6), ("p25", 0.8), ("p50", 1.0), ("p75", 1.2), ("p99", 2.0), ("p100", 3.0))
        latency = {
            "total_latency": {p: base * f for p, f in percentiles},
            "device_latency": {p: 0.8 * base * f for p, f in percentiles},
        }
    model_code = rt.memory_per_core // 4
    tensors = rt.memory_per_core // 2
    per_core = {
        str(core): {
            "constants": rt.memory_per_core - model_code - tensors,
            "model_code": model_code,
            "model_shared_scratchpad": 0,
            "runtime_memory": 0,
            "tensors": tensors,
        }
        for core in rt.cores
    }
    subgraphs = {
        f"sg_{i:02d}": {
            "memory_used_bytes": {"host": 20480, "neuron_device": model_code},
            "neuroncore_index": core % host.cores_per_device,
            "neuron_device_index": core // host.cores_per_device,
        }
        for i, core in enumerate(rt.cores)
    }
    return {
        "pid": rt.pid,
        "neuron_runtime_tag": rt.tag or str(rt.pid),
        "error": "",
        "report": {
            "neuroncore_counters": {"period": period, "neuroncores_in_use": cores, "error": ""},
            "execution_stats": {
                "period": period,
                "error_summary": {
                    "generic": failed,
                    "numerical": 0,
                    "transient": 0,
                    "model": 0,
                    "runtime": 0,
                    "hardware": 0,
                },
                "execution_summary": {
                    "completed": completed,
                    "completed_with_err": failed,
                    "completed_with_num_err": 0,
                    "timed_out": 0,
                    "incorrect_input": 0,
                    "failed_to_queue": 0,
                },
                "latency_stats": latency,
                "error": "",
            },
            "memory_used": {
                "period": period,
                "neuron_runtime_used_bytes": {
                    "host": 512 * 2**20,
                    "neuron_device": rt.memory_per_core * len(rt.cores),
                    "usage_breakdown": {
                        "host": {
                            "application_memory": 510 * 2**20,
                            "constants": 0,
                            "dma_buffers": 2 * 2**20,
                            "tensors": 0,
                        },
                        "neuroncore_memory_usage": per_core,
                    },
                },
                "loaded_models": (
                    [
                        {
                            "name": f"{rt.tag or rt.pid}.neff",
                            "uuid": f"{rt.pid:032x}",
                            "model_id": 10000 + rt.pid % 10000,
                            "is_running": busy > 0,
                            "subgraphs": subgraphs,
                        }
                    ]
                    if rt.cores
                    else []
                ),
                "error": "",
            },
        },
    }


def build_record(scenario: Scenario, window: Window, index: int) -> dict[str, Any]:
    """The whole document for record number `index` (1-based) covering `window`."""
    host = scenario.neuron
    if host is None:
        raise ValueError(f"scenario {scenario.name!r} has no neuron: section")
    period = window.length
    hw_error = host.error_every > 0 and index % host.error_every == 0
    devices = None
    if not hw_error:
        devices = [
            {
                "neuron_device_index": d,
                "mem_ecc_corrected": 0,
                "mem_ecc_uncorrected": 0,
                "sram_ecc_uncorrected": 0,
                "sram_ecc_corrected": 0,
            }
            for d in range(host.devices)
        ]
    version, core_version, lnc = _VERSIONS.get(host.device_type, ("", "", 1))
    h = scenario.host
    record: dict[str, Any] = {
        "neuron_runtime_data": [runtime_report(rt, host, window) for rt in host.runtimes if _active(rt, window.end)],
        "system_data": {
            "neuron_hw_counters": {
                "period": period,
                "neuron_devices": devices,
                "error": "simulated: failed to read neuron hardware counters" if hw_error else "",
            },
            "memory_info": {
                "period": period,
                "memory_total_bytes": 768 * 2**30,
                "memory_used_bytes": 96 * 2**30,
                "swap_total_bytes": 0,
                "swap_used_bytes": 0,
                "error": "",
            },
        },
        "instance_info": {
            "instance_name": "",
            "instance_id": h.instance_id or "",
            "instance_type": h.instance_type or "",
            "instance_availability_zone": h.zone or "",
            "instance_availability_zone_id": "",
            "instance_region": h.region or "",
            "ami_id": "",
            "subnet_id": "",
            "error": "",
        },
        "neuron_hardware_info": {
            "neuron_device_type": host.device_type,
            "neuron_device_version": version,
            "neuroncore_version": core_version,
            "neuron_device_count": host.devices,
            "neuron_device_memory_size": host.memory_per_device,
            "neuroncore_per_device_count": host.cores_per_device,
            "logical_neuroncore_config": lnc,
            "error": "",
        },
    }
    return record


def encode(record: dict[str, Any], pad_to: int = 0) -> bytes:
    """One compact JSON line (no newline); padded with an unknown key up to `pad_to` bytes."""
    line = json.dumps(record, separators=(",", ":")).encode()
    if pad_to > len(line):
        record = {**record, "simulated_padding": "x" * (pad_to - len(line) - 25)}
        line = json.dumps(record, separators=(",", ":")).encode()
    return line


def read_period(config_path: str | None) -> float:
    """The root `period` of a neuron-monitor config file (default 5s); raises ValueError naming the problem."""
    if config_path is None:
        return DEFAULT_PERIOD
    try:
        document = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read config file {config_path}: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"config file {config_path}: expected a JSON object")
    raw = document.get("period", "5s")
    period = parse_duration(raw) if isinstance(raw, str) else None
    if period is None or period <= 0:
        raise ValueError(f"config file {config_path}: invalid period {raw!r} (use e.g. '5s' or '500ms')")
    return period


class _Out:
    """stdout as bytes, one line at a time, flushed (the reader waits for whole lines)."""

    def __init__(self) -> None:
        self._stream = sys.stdout.buffer

    def line(self, data: bytes) -> None:
        self._stream.write(data + b"\n")
        self._stream.flush()


def run(scenario: Scenario, period: float, verbose: int, offset: float) -> int:
    """Print records until killed (or until the scenario's crash fault); returns the exit status."""
    host = scenario.neuron
    assert host is not None
    out = _Out()
    started = time.monotonic()

    def now() -> float:
        return time.monotonic() - started + offset

    print(f"{_PROG}: scenario {scenario.name}, period {period:g}s", file=sys.stderr, flush=True)
    previous = now() - FIRST_PERIOD
    index = 0
    while True:
        index += 1
        t = now()
        window = Window(previous, t)
        previous = t
        record = build_record(scenario, window, index)
        pad = host.oversized_bytes if host.oversized_every and index % host.oversized_every == 0 else 0
        out.line(encode(record, pad))
        if verbose:
            print(f"{_PROG}: record {index} covers {window.length:.6f}s", file=sys.stderr, flush=True)
        if host.garbage_every and index % host.garbage_every == 0:
            out.line(_GARBAGE[(index // host.garbage_every) % len(_GARBAGE)])
        if host.crash_after_lines and index >= host.crash_after_lines:
            print(f"{_PROG}: fatal: simulated crash after {index} records", file=sys.stderr, flush=True)
            return 1
        # Absolute schedule: no drift; if stdout blocked us past a deadline, catch up at once.
        due = started + index * period
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 with one clear line for bad arguments, config or scenario."""
    parser = argparse.ArgumentParser(
        prog="neuron-monitor", description="Simulated neuron-monitor for accel-cost-exporter."
    )
    parser.add_argument("-c", "--config-file", dest="config", help="neuron-monitor JSON config")
    parser.add_argument("--verbose", type=int, default=0, help="stderr verbosity 0-4")
    parser.add_argument("--scenario", default=None, help=f"scenario name or file (default: ${SCENARIO_ENV})")
    args = parser.parse_args(argv)
    name = args.scenario or os.environ.get(SCENARIO_ENV, "")
    if not name:
        print(f"{_PROG}: no scenario: pass --scenario NAME_OR_PATH or set {SCENARIO_ENV}", file=sys.stderr)
        return 2
    try:
        offset = float(os.environ.get(OFFSET_ENV, "0") or 0)
    except ValueError:
        print(f"{_PROG}: {OFFSET_ENV} must be a number of seconds", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(name)
        period = read_period(args.config)
    except (ConfigInvalid, ValueError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    if scenario.neuron is None:
        print(f"{_PROG}: scenario {scenario.name!r} has no neuron: section", file=sys.stderr)
        return 2
    try:
        return run(scenario, period, args.verbose, offset)
    except BrokenPipeError:
        # The reader went away: exit quietly, without a second error while flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def write_fake_monitor_wrapper(directory: Path, scenario: str) -> Path:
    """Write an executable `neuron-monitor` shell wrapper that runs this fake with `scenario`.

    The exporter runs neuron-monitor as one absolute executable path; the wrapper is that path.
    Returns its absolute path.
    """
    return write_wrapper(directory, "neuron-monitor", "exporter.sim.neuron_monitor", scenario)


class ScenarioNeuronProcesses:
    """ProcessFactsReader for the scenario's Neuron runtimes (the demo has no real pids).

    `epoch` is the Unix time of the scenario's start, so `started: -3600` means an hour before.
    """

    def __init__(self, scenario: Scenario, epoch: float) -> None:
        runtimes = scenario.neuron.runtimes if scenario.neuron else ()
        self._facts = {
            rt.pid: ProcessFacts(
                user=rt.user, command=rt.command, start_time_seconds=epoch + rt.started, cgroup=rt.cgroup
            )
            for rt in runtimes
        }

    def facts(self, pid: int) -> ProcessFacts | None:
        """Facts for a runtime pid of the scenario; None for any other pid."""
        return self._facts.get(pid)


if __name__ == "__main__":
    sys.exit(main())
