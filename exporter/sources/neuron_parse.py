"""Pure parser for one line of neuron-monitor output: bytes or str in, a frozen record out.

neuron-monitor writes one compact JSON document per line. Every key is optional, objects and
arrays may be null, any group may carry a non-empty `error` (then it must be skipped), and the
schema grew over Neuron releases (`inference_stats` became `execution_stats` in 2.4). The parser
keeps only what the exporter uses, ignores everything it does not know, and never raises
anything but ParseError (a ValueError) for a line that is not a JSON object at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from exporter.numbers import finite_number

# The outcome, error and ECC names the exporter exports; anything else is ignored so a new
# neuron-monitor field cannot grow the label space unnoticed.
OUTCOMES = (
    "completed",
    "completed_with_err",
    "completed_with_num_err",
    "timed_out",
    "incorrect_input",
    "failed_to_queue",
)
ERROR_TYPES = ("generic", "numerical", "transient", "model", "runtime", "hardware")
ECC_FIELDS = (
    ("mem_ecc_corrected", "mem_corrected"),
    ("mem_ecc_uncorrected", "mem_uncorrected"),
    ("sram_ecc_corrected", "sram_corrected"),
    ("sram_ecc_uncorrected", "sram_uncorrected"),
)

# Old (Neuron 1.x / <= 2.3) group names, read as their current equivalents.
_COUNTER_GROUPS = ("neuroncore_counters", "nc_counters")
_EXECUTION_GROUPS = ("execution_stats", "inference_stats")
_SUMMARY_KEYS = ("execution_summary", "inference_summary")
_HW_GROUPS = ("neuron_hw_counters", "hw_counters")


class ParseError(ValueError):
    """The line is not a JSON object (truncated, garbage, wrong encoding, nested too deeply)."""


class CoreUsage(NamedTuple):
    """One NeuronCore as one runtime reported it: `core` is the global index.

    `utilization_percent` is None when the value cannot be vouched for (missing, null, a string,
    NaN, an infinity, far outside 0-100): unknown, which is not the same as idle.
    """

    core: int
    utilization_percent: float | None
    flops: float | None = None


@dataclass(frozen=True)
class CoreCounters:
    """A runtime's `neuroncore_counters` group, one column per field of its cores.

    `period` is None when the group's period is unusable or the group carried an `error` (then
    there are no cores): the busy time of the runtime's cores over this line is unknown.

    Columns rather than a CoreUsage per core: a 32-runtime line lists a thousand cores, and the
    record crosses a pipe from the parser child; three tuples of plain numbers unpickle and
    iterate several times faster than a thousand small objects. `cores` gives the rows. The parser
    builds the columns together; readers zip them without `strict`, so columns of unequal length
    (a record from a confused parser child) cost rows, never an exception.
    """

    period: float | None
    core_ids: tuple[int, ...] = ()
    percents: tuple[float | None, ...] = ()
    flops: tuple[float | None, ...] = ()

    @property
    def cores(self) -> tuple[CoreUsage, ...]:
        """One CoreUsage per listed core, in the order listed."""
        return tuple(map(CoreUsage, self.core_ids, self.percents, self.flops))


@dataclass(frozen=True)
class ExecutionStats:
    """A runtime's `execution_stats` group: counts for the captured period (deltas, not totals)."""

    period: float | None
    outcomes: tuple[tuple[str, int], ...]
    errors: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class MemoryUsed:
    """A runtime's `memory_used` group.

    `per_core` sums each global core's `neuroncore_memory_usage` breakdown; `model_cores` holds
    the (device index, device-local core index) pairs of its loaded models' subgraphs, which
    only become global core numbers once the cores per device are known.
    """

    period: float | None
    host_bytes: int | None
    device_bytes: int | None
    per_core: tuple[tuple[int, int], ...]
    model_cores: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RuntimeReport:
    """One Neuron application (`neuron_runtime_data[]` entry) without an `error`."""

    pid: int
    tag: str
    counters: CoreCounters | None = None
    execution: ExecutionStats | None = None
    memory: MemoryUsed | None = None
    # Periods of every group of this runtime, used only when no core counters exist.
    periods: tuple[float, ...] = ()


@dataclass(frozen=True)
class DeviceEcc:
    """ECC event counts of one Neuron device, by exported type name."""

    device: int
    counts: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class HwCounters:
    """`system_data.neuron_hw_counters`."""

    period: float | None
    devices: tuple[DeviceEcc, ...]


@dataclass(frozen=True)
class HardwareInfo:
    """`neuron_hardware_info`: the core inventory (logical cores) and what the devices are."""

    device_count: int
    cores_per_device: int
    device_type: str = ""
    device_memory_bytes: int | None = None
    device_version: str = ""
    core_version: str = ""
    logical_core_config: int | None = None


@dataclass(frozen=True)
class InstanceInfo:
    """`instance_info`; any field may be empty (containers without IMDS access)."""

    instance_id: str = ""
    instance_type: str = ""
    zone: str = ""
    region: str = ""
    name: str = ""


@dataclass(frozen=True)
class GroupError:
    """A group or runtime skipped because neuron-monitor set its `error`."""

    where: str
    message: str


@dataclass(frozen=True)
class MonitorRecord:
    """Everything the exporter uses from one line."""

    runtimes: tuple[RuntimeReport, ...] = ()
    hardware: HardwareInfo | None = None
    instance: InstanceInfo | None = None
    hw_counters: HwCounters | None = None
    # Periods of every system_data group, for records without any runtime.
    system_periods: tuple[float, ...] = ()
    errors: tuple[GroupError, ...] = ()
    # (pid, tag) of runtimes skipped whole for their `error`: what they ran is unknown this line.
    failed_runtimes: tuple[tuple[int, str], ...] = ()
    # Utilization and counter-period values that were present but unusable.
    bad_values: int = 0

    def period(self) -> float | None:
        """The record's measured period in seconds.

        The longest valid `neuroncore_counters` period when a runtime reported cores; otherwise
        the longest period of any other group (an idle host has only system groups); None when
        the line carries no period at all.
        """
        counter_periods = [
            r.counters.period for r in self.runtimes if r.counters is not None and r.counters.period is not None
        ]
        if counter_periods:
            return max(counter_periods)
        others = [p for r in self.runtimes for p in r.periods]
        others.extend(self.system_periods)
        return max(others) if others else None


def parse_line(line: bytes | str) -> MonitorRecord:
    """Parse one neuron-monitor line; raises ParseError when it is not a JSON object."""
    try:
        document = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ParseError(f"not a JSON document: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise ParseError(f"expected a JSON object, found {type(document).__name__}")
    try:
        return parse_document(document)
    except (OverflowError, RecursionError) as exc:
        # Numbers no float can hold, or nesting deeper than the interpreter allows: one bad line,
        # counted and skipped like any other, must not end the reader.
        raise ParseError(f"unusable values: {_short(exc)}") from None


def parse_document(document: dict[str, Any]) -> MonitorRecord:
    """Turn an already decoded neuron-monitor document into a record; never raises."""
    errors: list[GroupError] = []
    failed: list[tuple[int, str]] = []
    runtimes = tuple(_runtimes(document.get("neuron_runtime_data"), errors, failed))
    system = _dict(document.get("system_data"))
    hw_counters = None
    system_periods: list[float] = []
    for name, group in system.items():
        if not isinstance(group, dict):
            continue
        if _group_error(group, f"system_data.{name}", errors):
            continue
        period = _period(group)
        if period is not None:
            system_periods.append(period)
        if name in _HW_GROUPS and hw_counters is None:
            hw_counters = HwCounters(period=period, devices=tuple(_ecc_devices(group.get("neuron_devices"))))
    return MonitorRecord(
        runtimes=runtimes,
        hardware=_hardware(document.get("neuron_hardware_info"), errors),
        instance=_instance(document.get("instance_info")),
        hw_counters=hw_counters,
        system_periods=tuple(system_periods),
        errors=tuple(errors),
        failed_runtimes=tuple(failed),
        bad_values=sum(_bad_values(rt.counters) for rt in runtimes),
    )


# --- helpers -------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    number = finite_number(value)
    if number is None or number < 0:
        return None
    return int(number)


def _index(key: Any) -> int | None:
    if isinstance(key, str) and key.isdigit() and len(key) <= 6:
        return int(key)
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 1_000_000:
        return key
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list)):
        return ""
    return str(value)


def _period(group: dict[str, Any]) -> float | None:
    period = finite_number(group.get("period"))
    return period if period is not None and period >= 0 else None


def _group_error(group: dict[str, Any], where: str, errors: list[GroupError]) -> bool:
    message = group.get("error")
    if isinstance(message, str) and message:
        errors.append(GroupError(where=where, message=message))
        return True
    return False


def _bad_values(counters: CoreCounters | None) -> int:
    if counters is None:
        return 0
    unusable = sum(1 for percent in counters.percents if percent is None)
    return unusable + (1 if counters.period is None and counters.core_ids else 0)


def _runtimes(value: Any, errors: list[GroupError], failed: list[tuple[int, str]]) -> list[RuntimeReport]:
    out: list[RuntimeReport] = []
    if not isinstance(value, list):
        return out
    for entry in value:
        if not isinstance(entry, dict):
            continue
        pid = _count(entry.get("pid"))
        tag = _text(entry.get("neuron_runtime_tag"))
        pid = 0 if pid is None else pid
        tag = tag or str(pid)
        where = f"runtime {tag} (pid {pid})"
        if _group_error(entry, where, errors):
            failed.append((pid, tag))
            continue
        out.append(_runtime(pid, tag, _dict(entry.get("report")), where, errors))
    return out


def _runtime(pid: int, tag: str, report: dict[str, Any], where: str, errors: list[GroupError]) -> RuntimeReport:
    counters: CoreCounters | None = None
    execution: ExecutionStats | None = None
    memory: MemoryUsed | None = None
    periods: list[float] = []
    for name, group in report.items():
        if not isinstance(group, dict):
            continue
        if _group_error(group, f"{where} {name}", errors):
            if name in _COUNTER_GROUPS and counters is None:
                counters = CoreCounters(period=None)  # its cores' busy time is unknown
            continue
        period = _period(group)
        if period is not None:
            periods.append(period)
        if name in _COUNTER_GROUPS and counters is None:
            counters = _core_counters(period, group.get("neuroncores_in_use"))
        elif name in _EXECUTION_GROUPS and execution is None:
            execution = _execution(group, period)
        elif name == "memory_used" and memory is None:
            memory = _memory(group, period)
    return RuntimeReport(
        pid=pid, tag=tag, counters=counters, execution=execution, memory=memory, periods=tuple(periods)
    )


# Rounding in the monitor can put a utilization a little outside 0-100; that much is clamped,
# anything further out is not a utilization at all.
_PERCENT_SLACK = 1.0


def _core_counters(period: float | None, value: Any) -> CoreCounters:
    # The hottest loop of a 32-runtime line (runtimes x cores): plain type checks, no helper calls.
    ids: list[int] = []
    percents: list[float | None] = []
    flops_column: list[float | None] = []
    for key, item in _dict(value).items():
        core = int(key) if type(key) is str and key.isdigit() and len(key) <= 6 else _index(key)
        if core is None:
            continue
        ids.append(core)
        if type(item) is not dict:
            percents.append(None)  # listed, but with nothing to vouch for
            flops_column.append(None)
            continue
        util: Any = item.get("neuroncore_utilization")
        kind = type(util)
        percent: float | None = None
        # NaN fails both comparisons; bools, strings and null are not numbers here.
        if (kind is int or kind is float) and -_PERCENT_SLACK <= util <= 100.0 + _PERCENT_SLACK:
            percent = 100.0 if util > 100 else (float(util) if util > 0 else 0.0)
        percents.append(percent)
        flops: Any = item.get("flops")
        kind = type(flops)
        flops_column.append(float(flops) if (kind is int or kind is float) and flops >= 0 else None)
    return CoreCounters(period, tuple(ids), tuple(percents), tuple(flops_column))


def _counts(value: Any, names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    data = _dict(value)
    out: list[tuple[str, int]] = []
    for name in names:
        count = _count(data.get(name))
        if count is not None:
            out.append((name, count))
    return tuple(out)


def _execution(group: dict[str, Any], period: float | None) -> ExecutionStats:
    summary = next((group[k] for k in _SUMMARY_KEYS if isinstance(group.get(k), dict)), None)
    return ExecutionStats(
        period=period, outcomes=_counts(summary, OUTCOMES), errors=_counts(group.get("error_summary"), ERROR_TYPES)
    )


def _memory(group: dict[str, Any], period: float | None) -> MemoryUsed:
    used = _dict(group.get("neuron_runtime_used_bytes"))
    per_core: list[tuple[int, int]] = []
    for key, item in _dict(_dict(used.get("usage_breakdown")).get("neuroncore_memory_usage")).items():
        if type(item) is not dict:
            continue
        core = int(key) if type(key) is str and key.isdigit() and len(key) <= 6 else _index(key)
        if core is None:
            continue
        total = 0
        for part in item.values():
            kind = type(part)
            if kind is int:
                if part > 0:
                    total += part
            elif kind is float and 0 < part < math.inf:
                total += int(part)
        per_core.append((core, total))
    # Runtimes x models x subgraphs: thousands per big line, so plain type checks here too.
    # Indices are JSON integers; anything else (floats, strings, negatives) is not an index.
    model_cores: set[tuple[int, int]] = set()
    models = group.get("loaded_models")
    if type(models) is list:
        for model in models:
            subgraphs = model.get("subgraphs") if type(model) is dict else None
            if type(subgraphs) is not dict:
                continue
            for subgraph in subgraphs.values():
                if type(subgraph) is not dict:
                    continue
                device = subgraph.get("neuron_device_index")
                local = subgraph.get("neuroncore_index")
                if type(device) is int and type(local) is int and device >= 0 and local >= 0:
                    model_cores.add((device, local))
    return MemoryUsed(
        period=period,
        host_bytes=_count(used.get("host")),
        device_bytes=_count(used.get("neuron_device")),
        per_core=tuple(per_core),
        model_cores=tuple(sorted(model_cores)),
    )


def _ecc_devices(value: Any) -> list[DeviceEcc]:
    out: list[DeviceEcc] = []
    if not isinstance(value, list):  # null without device access
        return out
    for item in value:
        if not isinstance(item, dict):
            continue
        device = _count(item.get("neuron_device_index"))
        if device is None:
            continue
        counts = []
        for field, label in ECC_FIELDS:
            count = _count(item.get(field))
            if count is not None:
                counts.append((label, count))
        out.append(DeviceEcc(device=device, counts=tuple(counts)))
    return out


def _hardware(value: Any, errors: list[GroupError]) -> HardwareInfo | None:
    if not isinstance(value, dict):
        return None
    if _group_error(value, "neuron_hardware_info", errors):
        return None
    devices = _count(value.get("neuron_device_count"))
    cores = _count(value.get("neuroncore_per_device_count"))
    if not devices or not cores:
        return None
    memory = _count(value.get("neuron_device_memory_size"))
    return HardwareInfo(
        device_count=devices,
        cores_per_device=cores,
        device_type=_text(value.get("neuron_device_type")),
        device_memory_bytes=memory or None,
        device_version=_text(value.get("neuron_device_version")),
        core_version=_text(value.get("neuroncore_version")),
        logical_core_config=_count(value.get("logical_neuroncore_config")),
    )


def _instance(value: Any) -> InstanceInfo | None:
    if not isinstance(value, dict):
        return None
    # Its `error` (no IMDS access in a container) is not counted: it would repeat on every line,
    # the exporter asks the metadata services itself, and the fields that were filled still count.
    info = InstanceInfo(
        instance_id=_text(value.get("instance_id")),
        instance_type=_text(value.get("instance_type")),
        zone=_text(value.get("instance_availability_zone")),
        region=_text(value.get("instance_region")),
        name=_text(value.get("instance_name")),
    )
    return info if info != InstanceInfo() else None
