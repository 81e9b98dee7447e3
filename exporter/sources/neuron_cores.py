"""NeuronCore accounting: parsed neuron-monitor records in, one DeviceReading per core out.

Rules (see docs/neuron.md and the reference's pitfalls):
- The inventory is `neuron_device_count x neuroncore_per_device_count` logical cores, and every
  core is reported on every poll, also when no runtime is attached (neuron-monitor then says
  nothing about cores at all).
- Several runtimes list the same core; the core's busy time over a record is the maximum over
  the runtimes of `period x utilization`. A core listed at 0 % is not owned.
- A runtime owns a core when it holds memory there (`neuroncore_memory_usage`), has a loaded
  model subgraph there (device-local index made global), or keeps it busy (utilization > 0).
- Busy time is integrated over each record's measured period; records shorter than
  `min_period` (the first line's ~0.5 ms capture) add neither busy nor covered time.
- A core whose busy time a record cannot vouch for (a bad value, a runtime or counter group
  `error`) adds that period as unknown time: neither busy nor covered. A failed runtime's cores
  are those it listed or held in the previous record; one never seen makes every core unknown.
- Execution counts are per-period deltas and go to the runtime's first owned core; ECC counts
  go to the Neuron device's first core, so no Neuron device needs an identity of its own.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

from exporter.readings import CounterDelta, DeviceIdentity, DeviceReading, HostHints, ProcessReading
from exporter.sources.neuron_parse import HardwareInfo, InstanceInfo, MonitorRecord, RuntimeReport
from exporter.sources.procfs import ProcessFacts, ProcessFactsReader, process_reading
from exporter.zones import region_from_zone

EXECUTION_METRIC = "accel_neuron_execution_total"
EXECUTION_ERRORS_METRIC = "accel_neuron_execution_errors_total"
ECC_METRIC = "accel_neuron_ecc_errors_total"

# Periods below this are the monitor's first, almost empty capture: their utilization means nothing.
MIN_PERIOD_SECONDS = 0.5

_FAMILY_MODEL = (
    (re.compile(r"^inf1\b"), "inferentia"),
    (re.compile(r"^inf2\b"), "inferentia2"),
    (re.compile(r"^trn1n?\b"), "trainium"),
    (re.compile(r"^trn2[a-z]*\b"), "trainium2"),
    (re.compile(r"^trn3[a-z]*\b"), "trainium3"),
)


def core_name(core: int) -> str:
    """The stable device label of a NeuronCore."""
    return f"neuroncore{core}"


def model_for(device_type: str, instance_type: str) -> str:
    """The chip name: neuron-monitor's `neuron_device_type`, else guessed from the instance family."""
    if device_type:
        return device_type
    for pattern, model in _FAMILY_MODEL:
        if pattern.match(instance_type):
            return model
    return "neuron"


def host_hints(info: InstanceInfo) -> HostHints:
    """Host identity from neuron-monitor's `instance_info` (the region is derived from the zone if missing)."""
    region = info.region or region_from_zone(info.zone)
    provider = "aws" if (info.instance_id or info.instance_type) else ""
    return HostHints(
        provider=provider, instance_type=info.instance_type, instance_id=info.instance_id, region=region, zone=info.zone
    )


class _Holder(NamedTuple):
    """A runtime holding a core in the latest record (a tuple: a big line makes a thousand)."""

    pid: int
    tag: str
    memory_bytes: int | None


class CoreTracker:
    """Accumulates records between polls and turns them into per-core readings.

    Not thread-safe; the source calls `ingest` and `readings` from the same event loop.
    """

    def __init__(self, host_name: str, *, min_period: float = MIN_PERIOD_SECONDS) -> None:
        self._host_name = host_name
        self._min_period = min_period
        self._hardware: HardwareInfo | None = None
        self._instance: InstanceInfo | None = None
        # Accumulated since the last `readings` call, per core.
        self._busy: dict[int, float] = {}
        self._covered: dict[int, float] = {}
        self._unknown: dict[int, float] = {}
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self._records = 0
        # State of the latest record.
        self._holders: dict[int, tuple[_Holder, ...]] = {}
        self._reported: frozenset[int] = frozenset()
        # What the holders were built from, and the cores they and the listings reported (see _update_holders).
        self._holders_shape: object = None
        self._holders_reported: frozenset[int] = frozenset()
        self._last_util: dict[int, float] = {}
        # Cores each runtime (pid, tag) listed or held in the latest record it was part of.
        self._runtime_cores: dict[tuple[int, str], frozenset[int]] = {}
        self._total_records = 0

    # --- ingest ---------------------------------------------------------------------------

    @property
    def records_since_poll(self) -> int:
        """Records ingested since the last `readings` call."""
        return self._records

    @property
    def total_records(self) -> int:
        """Records ingested since the tracker was made."""
        return self._total_records

    @property
    def inventory_known(self) -> bool:
        """Whether a usable `neuron_hardware_info` has been seen."""
        return self._hardware is not None

    @property
    def core_count(self) -> int:
        """Number of logical NeuronCores in the inventory (0 when unknown)."""
        hw = self._hardware
        return hw.device_count * hw.cores_per_device if hw else 0

    def ingest(self, record: MonitorRecord) -> int:
        """Fold one parsed line into the accumulators and the latest-state view.

        Returns how many cores' busy time the line could not vouch for (0 when all is known).
        """
        self._records += 1
        self._total_records += 1
        if record.hardware is not None:
            self._hardware = record.hardware
        if record.instance is not None:
            self._instance = record.instance
        hw = self._hardware
        if hw is None:
            # Without an inventory there is nothing to attribute to; the source reports the failure.
            return 0
        cores = self.core_count
        # Aligned with record.runtimes (pids are not unique keys: the guide's example has pid 0).
        owned = [self._owned_cores(rt, hw, cores) for rt in record.runtimes]
        unknown = self._unknown_cores(record, cores)
        self._update_holders(record, owned, cores)
        self._reported |= unknown
        self._remember_runtime_cores(record, owned)
        integrated = self._integrate(record, cores, unknown)
        self._count_executions(record.runtimes, owned, cores)
        self._count_ecc(record, hw)
        return len(unknown) if integrated else 0

    def _unknown_cores(self, record: MonitorRecord, cores: int) -> frozenset[int]:
        """Cores whose busy time over this record cannot be known."""
        every = frozenset(range(cores))
        unknown: set[int] = set()
        for key in record.failed_runtimes:
            last = self._runtime_cores.get(key)
            if last is None:
                return every  # a runtime never seen could have been running anywhere
            unknown |= last
        for rt in record.runtimes:
            counters = rt.counters
            if counters is None:
                continue
            if counters.period is None:
                # A short but real period (a runtime that attached moments ago) is not unknown: it
                # adds no busy time, as in the first capture.
                listed = set(counters.core_ids) or self._runtime_cores.get((rt.pid, rt.tag))
                if not listed:
                    return every
                unknown |= listed
            else:
                unknown.update(
                    core for core, percent in zip(counters.core_ids, counters.percents, strict=False) if percent is None
                )
        return frozenset(core for core in unknown if core < cores)

    def _remember_runtime_cores(self, record: MonitorRecord, owned: list[tuple[int, ...]]) -> None:
        # Only the latest record's runtimes (and the failed ones' earlier cores): it never grows.
        remembered = {key: self._runtime_cores[key] for key in record.failed_runtimes if key in self._runtime_cores}
        for rt, rt_owned in zip(record.runtimes, owned, strict=True):
            listed = set(rt.counters.core_ids) if rt.counters is not None else set()
            remembered[(rt.pid, rt.tag)] = frozenset(listed.union(rt_owned))
        self._runtime_cores = remembered

    def _owned_cores(self, runtime: RuntimeReport, hw: HardwareInfo, cores: int) -> tuple[int, ...]:
        owned: set[int] = set()
        if runtime.memory is not None:
            owned.update(core for core, used in runtime.memory.per_core if used > 0)
            # Subgraph indices are device-local; the rest of the stream uses global indices.
            owned.update(
                device * hw.cores_per_device + local
                for device, local in runtime.memory.model_cores
                if local < hw.cores_per_device
            )
        counters = runtime.counters
        if counters is not None:
            owned.update(core for core, percent in zip(counters.core_ids, counters.percents, strict=False) if percent)
        return tuple(sorted(core for core in owned if core < cores))

    def _update_holders(self, record: MonitorRecord, owned: list[tuple[int, ...]], cores: int) -> None:
        failed = set(record.failed_runtimes)
        # Everything the holders and the listed cores are made of; a steady host repeats it line
        # after line (only the utilization moves), so the last line's thousand holders still stand.
        shape = (
            None
            if failed
            else (
                cores,
                tuple(
                    (
                        rt.pid,
                        rt.tag,
                        rt_owned,
                        rt.memory.per_core if rt.memory is not None else None,
                        rt.counters.core_ids if rt.counters is not None else None,
                    )
                    for rt, rt_owned in zip(record.runtimes, owned, strict=True)
                ),
            )
        )
        if shape is not None and shape == self._holders_shape:
            self._reported = self._holders_reported
            return
        holders: dict[int, list[_Holder]] = {}
        reported: set[int] = set()
        if failed:
            # A runtime that reported only an error still holds what it held: keep it for now.
            for core, previous in self._holders.items():
                kept = [h for h in previous if (h.pid, h.tag) in failed]
                if kept:
                    holders[core] = kept
        for rt, rt_owned in zip(record.runtimes, owned, strict=True):
            memory = dict(rt.memory.per_core) if rt.memory is not None else {}
            for core in rt_owned:
                holders.setdefault(core, []).append(_Holder(rt.pid, rt.tag, memory.get(core)))
            if rt.counters is not None:
                reported.update(core for core in rt.counters.core_ids if core < cores)
        self._holders = {core: tuple(hs) for core, hs in holders.items()}
        self._reported = self._holders_reported = frozenset(reported) | frozenset(self._holders)
        self._holders_shape = shape

    def _integrate(self, record: MonitorRecord, cores: int, unknown: frozenset[int]) -> bool:
        """Add the record's period to every core's busy, covered or unknown time; False if it has none."""
        period = record.period()
        if period is None or period < self._min_period:
            return False
        busy: dict[int, float] = {}
        for rt in record.runtimes:
            counters = rt.counters
            if counters is None or counters.period is None or counters.period < self._min_period:
                continue
            span = min(counters.period, period)
            for core, percent in zip(counters.core_ids, counters.percents, strict=False):
                # None is unknown, 0 adds nothing: both are skipped without a lookup.
                if not percent or core >= cores:
                    continue
                seconds = span * percent / 100.0
                # Max, not sum and not average: other runtimes list this core at 0 %.
                if seconds > busy.get(core, 0.0):
                    busy[core] = seconds
        for core in range(cores):
            if core in unknown:
                # Neither busy nor idle; the last known utilization stands.
                self._unknown[core] = self._unknown.get(core, 0.0) + period
                continue
            self._covered[core] = self._covered.get(core, 0.0) + period
            seconds = busy.get(core, 0.0)
            if seconds:
                self._busy[core] = self._busy.get(core, 0.0) + seconds
            self._last_util[core] = seconds / period
        return True

    def _count_executions(self, runtimes: tuple[RuntimeReport, ...], owned: list[tuple[int, ...]], cores: int) -> None:
        for rt, rt_owned in zip(runtimes, owned, strict=True):
            stats = rt.execution
            if stats is None:
                continue
            target = self._execution_core(rt, rt_owned, cores)
            if target is None:
                continue
            device = core_name(target)
            for outcome, count in stats.outcomes:
                self._counters[(EXECUTION_METRIC, (("device", device), ("outcome", outcome)))] += count
            for error_type, count in stats.errors:
                self._counters[(EXECUTION_ERRORS_METRIC, (("device", device), ("error_type", error_type)))] += count

    @staticmethod
    def _execution_core(runtime: RuntimeReport, owned: tuple[int, ...], cores: int) -> int | None:
        # A runtime's executions are not broken down per core: its first owned core carries them
        # (sum over the runtime's cores is then exact; splitting would invent a distribution).
        if owned:
            return owned[0]
        listed = sorted(core for core in runtime.counters.core_ids if core < cores) if runtime.counters else []
        return listed[0] if listed else None

    def _count_ecc(self, record: MonitorRecord, hw: HardwareInfo) -> None:
        if record.hw_counters is None:
            return
        for dev in record.hw_counters.devices:
            if dev.device >= hw.device_count:
                continue
            # The guide does not say whether these are deltas or totals; AWS's own exporter adds
            # them up per line, and so do we (docs/neuron.md).
            device = core_name(dev.device * hw.cores_per_device)
            for ecc_type, count in dev.counts:
                self._counters[(ECC_METRIC, (("device", device), ("type", ecc_type)))] += count

    # --- output ---------------------------------------------------------------------------

    def holder_pids(self) -> frozenset[int]:
        """Pids of the runtimes holding cores in the latest record (what `readings` will look up)."""
        return frozenset(h.pid for holders in self._holders.values() for h in holders if h.pid > 0)

    def host_hints(self) -> HostHints | None:
        """Host identity from the latest `instance_info`, or None when the stream had none."""
        return host_hints(self._instance) if self._instance is not None else None

    def identities(self) -> tuple[DeviceIdentity, ...]:
        """One identity per core of the inventory."""
        hw = self._hardware
        if hw is None:
            return ()
        instance = self._instance or InstanceInfo()
        model = model_for(hw.device_type, instance.instance_type)
        owner = instance.instance_id or self._host_name
        return tuple(
            DeviceIdentity(
                device=core_name(core),
                uuid=f"{owner}-nc{core}",
                vendor="aws",
                model=model,
                kind="neuroncore",
                parent=f"neuron{core // hw.cores_per_device}",
                driver_version="",
                physical=True,
                price_units=1.0,
            )
            for core in range(self.core_count)
        )

    def readings(self, proc_reader: ProcessFactsReader) -> tuple[DeviceReading, ...]:
        """Every core since the previous call; resets the accumulators."""
        hw = self._hardware
        if hw is None:
            return ()
        core_memory = hw.device_memory_bytes // hw.cores_per_device if hw.device_memory_bytes else None
        counters: dict[str, list[CounterDelta]] = {}
        for (metric, labels), value in sorted(self._counters.items()):
            counters.setdefault(labels[0][1], []).append(CounterDelta(metric=metric, labels=labels, value=float(value)))
        facts_cache: dict[int, ProcessFacts | None] = {}
        # One reading per distinct holder: a runtime holding 32 cores with the same memory on most
        # of them is one object there, which the ledger's per-process memo then finds by identity.
        made: dict[_Holder, ProcessReading] = {}
        out = []
        for core, identity in enumerate(self.identities()):  # identities() lists core 0, 1, 2, ...
            holders = self._holders.get(core, ())
            processes = tuple(
                self._process(h, proc_reader, facts_cache, made)
                for h in sorted(holders, key=lambda h: (-(h.memory_bytes or 0), h.pid))
            )
            known = [h.memory_bytes for h in holders if h.memory_bytes is not None]
            memory_used = sum(known) if known or not holders else None
            busy = self._busy.get(core, 0.0)
            covered = self._covered.get(core, 0.0)
            unknown = self._unknown.get(core, 0.0)
            if covered > 0:
                utilization: float | None = min(1.0, busy / covered)
            elif core in self._last_util:
                utilization = self._last_util[core]
            elif core not in self._reported and not unknown:
                # No runtime lists or holds the core: nothing can run on it.
                utilization = 0.0
            else:
                utilization = None
            out.append(
                DeviceReading(
                    identity=identity,
                    up=True,
                    busy_seconds=busy,
                    covered_seconds=covered,
                    unknown_seconds=unknown,
                    utilization=utilization,
                    memory_used_bytes=memory_used,
                    memory_total_bytes=core_memory,
                    processes=processes,
                    memory_held=bool(memory_used) and not processes,
                    counters=tuple(counters.get(identity.device, ())),
                )
            )
        self._busy = {}
        self._covered = {}
        self._unknown = {}
        self._counters = Counter()
        self._records = 0
        return tuple(out)

    @staticmethod
    def _process(
        holder: _Holder,
        proc_reader: ProcessFactsReader,
        cache: dict[int, ProcessFacts | None],
        made: dict[_Holder, ProcessReading],
    ) -> ProcessReading:
        reading = made.get(holder)
        if reading is not None:
            return reading
        if holder.pid not in cache:
            # None when not visible here (no host PID namespace) or just exited: neuron-monitor still saw it.
            cache[holder.pid] = proc_reader.facts(holder.pid) if holder.pid > 0 else None
        reading = made[holder] = process_reading(holder.pid, holder.memory_bytes, cache[holder.pid], holder.tag)
        return reading
