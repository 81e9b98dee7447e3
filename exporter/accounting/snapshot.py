"""The immutable snapshot accounting hands to exposition after every poll."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.context.model import HostIdentity, Owner, PriceQuote
from exporter.readings import DeviceIdentity, Labels


@dataclass(frozen=True)
class ProcessSnapshot:
    """A process on a device, with its owner."""

    pid: int
    user: str
    command: str
    owner: Owner
    memory_bytes: int | None
    start_time_seconds: float | None


@dataclass(frozen=True)
class ActivitySnapshot:
    """GPM activity counters of a device (Hopper and later), and its SM occupancy when known."""

    sm_active_seconds_total: float
    tensor_active_seconds_total: float
    dram_active_seconds_total: float
    sm_occupancy: float | None


@dataclass(frozen=True)
class DeviceSnapshot:
    """One device's gauges and counters at the end of a poll."""

    identity: DeviceIdentity
    up: bool
    utilization: float | None
    busy_seconds_total: float
    has_busy: bool
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_watts: float | None
    energy_joules_total: float | None
    process_count: int
    processes: tuple[ProcessSnapshot, ...]
    state: str  # "" (NO_STATE) for a fully sliced MIG parent: no state series at all
    state_seconds: tuple[tuple[str, float], ...]
    idle_seconds: float
    price_per_hour: float | None
    owner: Owner
    cost: tuple[tuple[tuple[str, str], float], ...]
    idle_cost: tuple[tuple[tuple[str, str, str], float], ...]
    waste: tuple[tuple[tuple[str, str], float], ...]
    counters: tuple[tuple[str, Labels, float], ...]
    activity: ActivitySnapshot | None = None  # None: the device never had GPM
    waste_basis: str = ""  # "time" or "sm" for a device with a state; "" for a fully sliced MIG parent
    carbon: tuple[tuple[tuple[str, str], float], ...] = ()  # grams CO2e by (team, workload)


@dataclass(frozen=True)
class CollectorSnapshot:
    """Self-metrics of one collector (source or context provider)."""

    name: str
    success: bool
    duration_seconds: float
    last_sample_timestamp: float | None


@dataclass(frozen=True)
class ConfigReloadSnapshot:
    """Outcome of the last configuration (re)load, as Prometheus and Alertmanager report theirs."""

    successful: bool
    last_success_timestamp: float | None  # Unix time; None until a load has succeeded


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape shows; `version` changes with every new snapshot."""

    version: int
    devices: tuple[DeviceSnapshot, ...]
    identity: HostIdentity
    price: PriceQuote
    collectors: tuple[CollectorSnapshot, ...]
    errors: tuple[tuple[tuple[str, str], float], ...]
    label_overflow: tuple[tuple[str, float], ...]
    build_version: str
    config_reload: ConfigReloadSnapshot | None = None  # None: the daemon has not recorded a load
    # Grid intensity in force at the latest poll (g CO2e per kWh, before PUE) and its source
    # (schedule, config, config-region, builtin); None when unknown.
    grid_intensity: tuple[float, str] | None = None
