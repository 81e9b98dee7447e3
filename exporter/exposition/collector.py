"""Turns a Snapshot into fresh metric families, named and typed by the catalogue.

Nothing here is long-lived: every render builds new families, so a device or process that is
gone from the snapshot is gone from the output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.accounting.snapshot import ProcessSnapshot, Snapshot
from exporter.catalogue import STATES, spec

# name, label values in the catalogue's label order, value
AddSeries = Callable[[str, tuple[str, ...], float], None]
# device, its processes, and the call that emits their series through `add`; a renderer that has
# those series' lines already may add them itself and not call it.
ProcessBlock = Callable[[str, tuple[ProcessSnapshot, ...], Callable[[], None]], None]


class _Families:
    """Builds one family per catalogue entry on demand, in catalogue order."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, name: str, labels: tuple[str, ...], value: float) -> None:
        family = self._families.get(name)
        if family is None:
            entry = spec(name)
            if entry.type == "counter":
                family = CounterMetricFamily(name, entry.help, labels=list(entry.labels))
            else:
                family = GaugeMetricFamily(name, entry.help, labels=list(entry.labels))
            self._families[name] = family
        family.add_metric([encodable(v) for v in labels], value)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def encodable(value: str) -> str:
    """A label value UTF-8 can carry: a lone surrogate becomes '?'.

    Python hands out lone surrogates for undecodable bytes (a Latin-1 user name from pwd) and for
    JSON escapes like "\\ud800" (neuron-monitor); one of them would make every render fail.
    """
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


def _emit_processes(dev: str, processes: tuple[ProcessSnapshot, ...], add: AddSeries) -> None:
    for p in processes:
        o = p.owner
        pid = str(p.pid)
        add(
            "accel_process_info",
            (dev, pid, p.user, p.command, o.team, o.workload, o.pod, o.namespace, o.container, o.unit, o.slurm_job_id),
            1,
        )
        if p.memory_bytes is not None:
            add("accel_process_memory_used_bytes", (dev, pid), p.memory_bytes)
        if p.start_time_seconds is not None:
            add("accel_process_start_time_seconds", (dev, pid), p.start_time_seconds)


def emit_series(snapshot: Snapshot, add: AddSeries, process_block: ProcessBlock | None = None) -> None:
    """Call `add(name, label values in catalogue order, value)` for every series of one snapshot, in exposition order.

    Both renderers are driven by this one walk over the snapshot, so they cannot disagree about
    which series exist: prometheus-client's families (the reference) and the cached lines.
    Each device's process series go through `process_block` when given (see ProcessBlock).
    """
    add("accel_exporter_build_info", (snapshot.build_version,), 1)
    ident = snapshot.identity
    price = snapshot.price
    source = price.source if price.dollars_per_hour is not None or price.device_model_prices else "none"
    add(
        "accel_instance_info",
        (ident.provider, ident.instance_type, ident.instance_id, ident.region, ident.zone, ident.lifecycle, source),
        1,
    )
    if price.dollars_per_hour is not None:
        add("accel_instance_price_dollars_per_hour", (), price.dollars_per_hour)
    if snapshot.grid_intensity is not None:
        grams, grams_source = snapshot.grid_intensity
        add("accel_carbon_grid_intensity_grams_per_kwh", (grams_source,), grams)
    for d in snapshot.devices:
        i = d.identity
        dev = i.device
        add("accel_device_info", (dev, i.uuid, i.vendor, i.model, i.kind, i.parent, i.driver_version), 1)
        add("accel_device_up", (dev,), 1 if d.up else 0)
        if d.utilization is not None:
            add("accel_utilization_ratio", (dev,), d.utilization)
        if d.has_busy:
            add("accel_busy_seconds_total", (dev,), d.busy_seconds_total)
        if d.activity is not None:  # GPM (Hopper and later)
            add("accel_sm_active_seconds_total", (dev,), d.activity.sm_active_seconds_total)
            add("accel_tensor_active_seconds_total", (dev,), d.activity.tensor_active_seconds_total)
            add("accel_dram_active_seconds_total", (dev,), d.activity.dram_active_seconds_total)
            if d.activity.sm_occupancy is not None:
                add("accel_sm_occupancy_ratio", (dev,), d.activity.sm_occupancy)
        if d.memory_used_bytes is not None:
            add("accel_memory_used_bytes", (dev,), d.memory_used_bytes)
        if d.memory_total_bytes is not None:
            add("accel_memory_total_bytes", (dev,), d.memory_total_bytes)
        if d.power_watts is not None:
            add("accel_power_watts", (dev,), d.power_watts)
        if d.energy_joules_total is not None:
            add("accel_energy_joules_total", (dev,), d.energy_joules_total)
        add("accel_processes", (dev,), d.process_count)
        if d.state:  # a fully sliced MIG parent has none: its instances carry the GPU
            seconds = dict(d.state_seconds)
            for state in STATES:
                add("accel_state", (dev, state), 1 if d.state == state else 0)
                add("accel_state_seconds_total", (dev, state), seconds.get(state, 0.0))
            add("accel_idle_seconds", (dev,), d.idle_seconds)
        if d.price_per_hour is not None:
            add("accel_price_dollars_per_hour", (dev,), d.price_per_hour)
            if d.waste_basis:
                add("accel_waste_basis_info", (dev, d.waste_basis), 1)
        for (team, workload), value in d.cost:
            add("accel_cost_dollars_total", (dev, team, workload), value)
        for (team, workload, state), value in d.idle_cost:
            add("accel_idle_cost_dollars_total", (dev, team, workload, state), value)
        for (team, workload), value in d.waste:
            add("accel_waste_dollars_total", (dev, team, workload), value)
        for (team, workload), value in d.carbon:
            add("accel_carbon_grams_total", (dev, team, workload), value)
        if d.processes:
            emit = functools.partial(_emit_processes, dev, d.processes, add)
            if process_block is None:
                emit()
            else:
                process_block(dev, d.processes, emit)
        for metric, labels, value in d.counters:
            # By name, not position: a source may or may not include `device` in its labels.
            named = {**dict(labels), "device": dev}
            add(metric, tuple(named.get(label, "") for label in spec(metric).labels), value)
    for c in snapshot.collectors:
        add("accel_exporter_collector_success", (c.name,), 1 if c.success else 0)
        add("accel_exporter_collector_duration_seconds", (c.name,), c.duration_seconds)
        if c.last_sample_timestamp is not None:
            add("accel_exporter_last_sample_timestamp_seconds", (c.name,), c.last_sample_timestamp)
    for (collector, reason), value in snapshot.errors:
        add("accel_exporter_errors_total", (collector, reason), value)
    for label, value in snapshot.label_overflow:
        add("accel_exporter_label_overflow_total", (label,), value)
    reload = snapshot.config_reload
    if reload is not None:
        add("accel_exporter_config_last_reload_successful", (), 1 if reload.successful else 0)
        if reload.last_success_timestamp is not None:
            add("accel_exporter_config_last_reload_success_timestamp_seconds", (), reload.last_success_timestamp)


def build_families(snapshot: Snapshot) -> list[Metric]:
    """All metric families for one snapshot, as prometheus-client objects (the reference rendering)."""
    f = _Families()
    emit_series(snapshot, f.add)
    return list(f)


class SnapshotCollector(Collector):
    """A prometheus_client collector that yields the families of the latest snapshot."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._snapshot = snapshot

    def set(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (an atomic reference assignment)."""
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Nothing: keeps registration from calling collect() early."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Families for the current snapshot."""
        snapshot = self._snapshot
        if snapshot is not None:
            yield from build_families(snapshot)
