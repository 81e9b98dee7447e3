"""The metric catalogue: every series the exporter can emit, in one place.

The exposition layer, the generated metrics reference (`docs/metrics.md`) and the contract tests
for `alerts/` and `grafana/` all read this table, so a metric exists if and only if it is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exporter.accounting.states import ACTIVE, IDLE_FREE, IDLE_HELD

MetricType = Literal["gauge", "counter", "info"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its full exposed name, type, label names and help text."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    group: str


def _m(name: str, type_: MetricType, labels: tuple[str, ...], help_: str, group: str) -> MetricSpec:
    return MetricSpec(name=name, type=type_, labels=labels, help=help_, group=group)


_D = ("device",)
_OWNER = ("device", "team", "workload")

CATALOGUE: tuple[MetricSpec, ...] = (
    # --- device identity and health -------------------------------------------------------
    _m(
        "accel_device_info",
        "gauge",
        ("device", "uuid", "vendor", "model", "kind", "parent", "driver_version"),
        "Accelerator identity; always 1. Join on `device` with group_left.",
        "device",
    ),
    _m(
        "accel_device_up",
        "gauge",
        _D,
        "1 when the device was readable on the last poll, 0 when lost or failing.",
        "device",
    ),
    _m(
        "accel_utilization_ratio",
        "gauge",
        _D,
        "Busy fraction (0-1) since the previous read of the driver's sample buffer (NVML nvmlDeviceGetSamples, "
        "read each poll, or about every 5 s when polls come faster; neuron-monitor neuroncore_utilization). "
        "Absent when unknown (MIG without GPM).",
        "device",
    ),
    _m(
        "accel_busy_seconds_total",
        "counter",
        _D,
        "Integrated busy time in seconds; rate() is the utilization over any window of 5 s or more.",
        "device",
    ),
    _m(
        "accel_sm_active_seconds_total",
        "counter",
        _D,
        "SM activity integrated over time: seconds x share of SMs busy (NVML GPM SM_UTIL, Hopper and later, "
        "GPUs and MIG instances), between GPM samples about every 5 s; rate() is SM activity over any window "
        "of 5 s or more. A kernel on 1 of 132 SMs reads 100 % utilization but under 1 % here. Absent without GPM.",
        "device",
    ),
    _m(
        "accel_tensor_active_seconds_total",
        "counter",
        _D,
        "Seconds x share of time any tensor core pipe was busy (NVML GPM ANY_TENSOR_UTIL); rate() is tensor "
        "activity. Absent without GPM.",
        "device",
    ),
    _m(
        "accel_dram_active_seconds_total",
        "counter",
        _D,
        "Seconds x share of peak DRAM bandwidth used (NVML GPM DRAM_BW_UTIL); rate() is DRAM bandwidth "
        "utilization. Absent without GPM.",
        "device",
    ),
    _m(
        "accel_sm_occupancy_ratio",
        "gauge",
        _D,
        "Resident warps over the theoretical maximum (0-1, NVML GPM SM_OCCUPANCY), averaged over the last GPM "
        "interval. Absent without GPM or while its counters are in use by another client.",
        "device",
    ),
    _m(
        "accel_memory_used_bytes",
        "gauge",
        _D,
        "Device memory in use, in bytes (NVML memory v2 where available).",
        "device",
    ),
    _m("accel_memory_total_bytes", "gauge", _D, "Device memory size, in bytes.", "device"),
    _m(
        "accel_power_watts",
        "gauge",
        _D,
        "Power draw in watts (NVML nvmlDeviceGetPowerUsage), where available.",
        "device",
    ),
    _m(
        "accel_energy_joules_total",
        "counter",
        _D,
        "Energy consumed in joules (NVML nvmlDeviceGetTotalEnergyConsumption, read each poll, or about every 10 s "
        "when polls come faster), monotonic across driver resets.",
        "device",
    ),
    _m("accel_processes", "gauge", _D, "Number of processes holding the device.", "device"),
    # --- states -----------------------------------------------------------------------------
    _m(
        "accel_state",
        "gauge",
        ("device", "state"),
        "1 for the device's current state (active, idle_held, idle_free), 0 for the others; a MIG "
        "parent whose instances hold all its slices has no state series (its instances carry them).",
        "state",
    ),
    _m(
        "accel_state_seconds_total",
        "counter",
        ("device", "state"),
        "Seconds the device spent in each state (none for a fully sliced MIG parent).",
        "state",
    ),
    _m(
        "accel_idle_seconds",
        "gauge",
        _D,
        "Seconds since the device was last active (0 while active); with --state.directory it goes on across "
        "exporter restarts (last-active time kept by device UUID). Absent for a fully sliced MIG parent.",
        "state",
    ),
    # --- money --------------------------------------------------------------------------------
    _m(
        "accel_price_dollars_per_hour",
        "gauge",
        _D,
        "Hourly price attributed to this device, in USD; absent when no price is known. A MIG parent "
        "carries only its unallocated slices' share (k/7 on A100/H100), none when fully sliced.",
        "cost",
    ),
    _m(
        "accel_cost_dollars_total",
        "counter",
        _OWNER,
        'Money spent on the device, in USD: its hourly price x time; on owned hardware (price_source="owned") '
        "plus the electricity it drew, accel_energy_joules_total increments x PUE x tariff (power x time where "
        "the device has no energy counter).",
        "cost",
    ),
    _m(
        "accel_idle_cost_dollars_total",
        "counter",
        ("device", "team", "workload", "state"),
        "Money spent on the device while idle (state idle_held or idle_free), in USD.",
        "cost",
    ),
    _m(
        "accel_waste_dollars_total",
        "counter",
        _OWNER,
        "Utilization-weighted waste in USD: price x time x max(0, target - activity) / target, where activity is "
        "utilization, or SM activity with accounting.waste_basis: sm where GPM is available (accel_waste_basis_info).",
        "cost",
    ),
    _m(
        "accel_carbon_grams_total",
        "counter",
        _OWNER,
        "Grams of CO2e for the electricity the device drew: accel_energy_joules_total increments (power x time "
        "where the device has no energy counter) x PUE x grid intensity: the carbon.schedule_file period in force, "
        "else carbon.grid_intensity, else the dated built-in AWS region table. Absent where the grid intensity is "
        "unknown.",
        "cost",
    ),
    _m(
        "accel_waste_basis_info",
        "gauge",
        ("device", "basis"),
        'What the device\'s waste is measured on; always 1. basis="time": utilization (kernel time); '
        'basis="sm": SM activity through GPM (accounting.waste_basis: sm on a device with GPM).',
        "cost",
    ),
    _m(
        "accel_instance_info",
        "gauge",
        ("provider", "instance_type", "instance_id", "region", "zone", "lifecycle", "price_source"),
        "Host identity and where its price came from; always 1.",
        "cost",
    ),
    _m(
        "accel_instance_price_dollars_per_hour",
        "gauge",
        (),
        "Whole-instance hourly price in USD; absent when no price is known.",
        "cost",
    ),
    _m(
        "accel_carbon_grid_intensity_grams_per_kwh",
        "gauge",
        ("source",),
        "Grid carbon intensity in force at the latest poll, g CO2e per kWh before PUE. source: schedule (a "
        "carbon.schedule_file period covers now), config (carbon.grid_intensity), config-region (carbon.regions) "
        "or builtin (the dated AWS region table). Absent when none is known.",
        "cost",
    ),
    # --- processes ----------------------------------------------------------------------------
    _m(
        "accel_process_info",
        "gauge",
        (
            "device",
            "pid",
            "user",
            "command",
            "team",
            "workload",
            "pod",
            "namespace",
            "container",
            "unit",
            "slurm_job_id",
        ),
        "A process holding the device; always 1. Bounded per device. slurm_job_id is the Slurm job whose cgroup "
        "holds the process (empty elsewhere).",
        "process",
    ),
    _m(
        "accel_process_memory_used_bytes",
        "gauge",
        ("device", "pid"),
        "Device memory used by the process, in bytes.",
        "process",
    ),
    _m(
        "accel_process_start_time_seconds",
        "gauge",
        ("device", "pid"),
        "Unix time the process started (from /proc).",
        "process",
    ),
    # --- vendor extras ----------------------------------------------------------------------
    _m(
        "accel_nvidia_xid_errors_total",
        "counter",
        ("device", "xid"),
        "NVIDIA XID critical error events seen (NVML nvmlEventSetWait_v2).",
        "nvidia",
    ),
    _m(
        "accel_neuron_execution_total",
        "counter",
        ("device", "outcome"),
        "Neuron executions by outcome (neuron-monitor execution_summary per-period counts), on each runtime's "
        "first owned NeuronCore: sum over a runtime's cores, not per core.",
        "neuron",
    ),
    _m(
        "accel_neuron_execution_errors_total",
        "counter",
        ("device", "error_type"),
        "Neuron execution errors by type (neuron-monitor error_summary), on each runtime's first owned NeuronCore.",
        "neuron",
    ),
    _m(
        "accel_neuron_ecc_errors_total",
        "counter",
        ("device", "type"),
        "Neuron device ECC events by type (neuron-monitor neuron_hw_counters: mem_corrected, mem_uncorrected, "
        "sram_corrected, sram_uncorrected), on the Neuron device's first NeuronCore (see parent in accel_device_info).",
        "neuron",
    ),
    # --- the exporter itself ------------------------------------------------------------------
    _m("accel_exporter_build_info", "gauge", ("version",), "Exporter build; always 1.", "exporter"),
    _m(
        "accel_exporter_collector_success",
        "gauge",
        ("collector",),
        "1 when the collector's last poll succeeded, else 0.",
        "exporter",
    ),
    _m(
        "accel_exporter_collector_duration_seconds",
        "gauge",
        ("collector",),
        "Duration of the collector's last poll, in seconds.",
        "exporter",
    ),
    _m(
        "accel_exporter_last_sample_timestamp_seconds",
        "gauge",
        ("collector",),
        "Unix time of the collector's last successful sample.",
        "exporter",
    ),
    _m(
        "accel_exporter_errors_total",
        "counter",
        ("collector", "reason"),
        "Errors by collector and reason (e.g. GpuIsLost, parse, restart, throttled).",
        "exporter",
    ),
    _m(
        "accel_exporter_config_last_reload_successful",
        "gauge",
        (),
        "1 when the last load of the configuration file (at start or on SIGHUP) succeeded; 0 when a reload was "
        "refused and the previous configuration stays in force.",
        "exporter",
    ),
    _m(
        "accel_exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time of the last successful load of the configuration file (at start or on SIGHUP).",
        "exporter",
    ),
    _m(
        "accel_exporter_label_overflow_total",
        "counter",
        ("label",),
        'Label values replaced by `other` because the distinct-value cap was reached; label="pair" counts '
        "intervals charged to (other, other) because the device's (team, workload) pair cap was reached.",
        "exporter",
    ),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}

STATES: tuple[str, ...] = (ACTIVE, IDLE_HELD, IDLE_FREE)


def spec(name: str) -> MetricSpec:
    """Return the catalogue entry for `name`; a KeyError names a metric missing from the catalogue."""
    return BY_NAME[name]


def counter_problem(name: str, label_names: tuple[str, ...]) -> str | None:
    """Why a source's counter increment cannot be exposed (None when it can): checked where it
    enters the ledger, so one misspelled name is refused and counted instead of failing every render."""
    entry = BY_NAME.get(name)
    if entry is None:
        return f"{name} is not in the metric catalogue"
    if entry.type != "counter":
        return f"{name} is a {entry.type}, not a counter"
    unknown = [label for label in label_names if label not in entry.labels]
    if unknown:
        return f"{name} has no label {', '.join(unknown)}"
    return None
