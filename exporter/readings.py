"""Plain readings: what a source saw on one poll, with no money in it.

Sources produce these; accounting consumes them. Every class is frozen so a reading can be
handed between the sampler thread, the event loop and the tests without copying.
"""

from __future__ import annotations

from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

# A command line can be megabytes (generated argument lists): only this much of it is read, matched
# by attribution rules and carried in readings.
COMMAND_PREFIX_CHARS = 4096


@dataclass(frozen=True)
class DeviceIdentity:
    """Who a device is. `device` is the stable name (`nvidia0`, `nvidia0-mig1`, `neuroncore3`)."""

    device: str
    uuid: str
    vendor: str
    model: str
    kind: str  # gpu | mig | neuroncore
    parent: str = ""
    driver_version: str = ""
    # The device counts as one physical accelerator when the instance price is split.
    physical: bool = True
    # Share of one physical accelerator's price this device carries: 1.0 for a whole GPU or a
    # NeuronCore, the slice fraction for a MIG instance, the unallocated remainder for a MIG parent.
    price_units: float = 1.0
    # A GPU in MIG mode with instances: its own state and price cover only its unallocated slices
    # (none at all when fully sliced, price_units 0); the instances carry the rest.
    mig_parent: bool = False


@dataclass(frozen=True)
class ProcessReading:
    """A process holding a device, with the host facts read from /proc (or the simulator)."""

    pid: int
    used_memory_bytes: int | None
    user: str = "unknown"
    command: str = ""
    start_time_seconds: float | None = None
    cgroup: str = ""
    runtime_tag: str = ""


@dataclass(frozen=True)
class CounterDelta:
    """An increment of a vendor counter from the catalogue (e.g. XID events, Neuron executions).

    `labels` names the catalogue labels; `device` is always the reading's device, given or not.
    """

    metric: str
    labels: Labels
    value: float


@dataclass(frozen=True)
class GpmReading:
    """What NVML GPU Performance Monitoring (Hopper and later) measured between two of its samples.

    The `*_seconds` fields are activity integrated over `covered_seconds` (0 between reads of
    the counters, which then wait for the next read); the ratios are the latest read's averages.
    """

    covered_seconds: float
    sm_active_seconds: float
    tensor_active_seconds: float
    dram_active_seconds: float
    sm_activity: float  # share of SMs busy, averaged over the last read's interval (0-1)
    sm_occupancy: float  # active warps over the theoretical maximum (0-1)
    tensor_activity: float
    dram_activity: float


@dataclass(frozen=True)
class DeviceReading:
    """One device on one poll.

    `busy_seconds` and `covered_seconds` describe the interval since the previous poll as the
    driver measured it (sample buffer or measured period); `utilization` is their ratio, or None
    when the device cannot report activity (MIG without GPM), which is not the same as idle.
    `unknown_seconds` is measured time the source cannot vouch for (bad values in the stream):
    it is neither busy nor covered, and accounting charges it to no state.
    """

    identity: DeviceIdentity
    up: bool
    busy_seconds: float | None = None
    covered_seconds: float = 0.0
    utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    # Absolute driver energy counter in joules; it resets on driver reload, accounting keeps it monotonic.
    energy_joules: float | None = None
    processes: tuple[ProcessReading, ...] = ()
    # Memory held although no process is visible (e.g. a container without hostPID).
    memory_held: bool = False
    counters: tuple[CounterDelta, ...] = ()
    # None where GPM is unavailable (before Hopper, DCGM profiling holding the counters, ...).
    gpm: GpmReading | None = None
    # Last, so positional construction keeps its meaning for the fields before it.
    unknown_seconds: float = 0.0


@dataclass(frozen=True)
class HostHints:
    """Host identity a source learned on its own (neuron-monitor's instance_info)."""

    provider: str = ""
    instance_type: str = ""
    instance_id: str = ""
    region: str = ""
    zone: str = ""


@dataclass(frozen=True)
class SourceReport:
    """Everything one source produced on one poll.

    `complete` is False when the source could not enumerate its devices at all; accounting then
    keeps the devices it knew and marks them down instead of dropping them.
    """

    collector: str
    devices: tuple[DeviceReading, ...]
    success: bool
    duration_seconds: float
    timestamp: float
    errors: tuple[tuple[str, int], ...] = ()
    complete: bool = True
    # The poll did not finish in time (yet): devices keep their last reading for now.
    stalled: bool = False
    host_hints: HostHints | None = None
    message: str = ""
