"""The ledger: integrates each poll's readings into counters and produces immutable snapshots.

Every interval between two polls of a device is charged, whole, to the state and owner seen at
the end of it, so dollars always equal price x seconds exactly, whatever the poll interval.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from exporter import __version__
from exporter.accounting.activity import ActivityBook, waste_activity
from exporter.accounting.device_price import device_prices
from exporter.accounting.idle_clock import IdleMark
from exporter.accounting.labelcap import LabelCap
from exporter.accounting.pair_cap import Pair, PairCap, fold_into_other
from exporter.accounting.snapshot import (
    CollectorSnapshot,
    ConfigReloadSnapshot,
    DeviceSnapshot,
    ProcessSnapshot,
    Snapshot,
)
from exporter.accounting.states import ACTIVE, IDLE_FREE, IDLE_STATES, NO_STATE, classify
from exporter.catalogue import counter_problem
from exporter.config.model import AccountingSettings
from exporter.context.model import UNASSIGNED, Attributor, HostContext, HostIdentity, Owner, PodFacts, PriceQuote
from exporter.context.owner.labels import sanitize_label
from exporter.readings import DeviceIdentity, DeviceReading, Labels, ProcessReading, SourceReport

log = logging.getLogger(__name__)

SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6
USER_LABEL_LENGTH = 64
COMMAND_LABEL_LENGTH = 128
# Pods a device is allocated to, from the kubelet's pod-resources API.
DevicePods = Callable[[DeviceIdentity], Sequence[PodFacts]]
# Slurm jobs a device is allocated to, from dcgm-exporter's HPC job-mapping directory.
DeviceJobs = Callable[[DeviceIdentity], Sequence[str]]
T = TypeVar("T")


@dataclass
class _DeviceBook:
    """Everything that accumulates for one device."""

    collector: str
    first_seen: float
    last_time: float
    last_active: float
    reading: DeviceReading
    state: str = IDLE_FREE
    state_since: float = 0.0
    owner: Owner = field(default_factory=Owner)
    processes: tuple[ProcessSnapshot, ...] = ()
    busy_total: float = 0.0
    has_busy: bool = False
    energy_total: float | None = None
    energy_raw: float | None = None
    energy_read_at: float | None = None  # ledger time of the last energy reading: its increment spans from there
    state_seconds: dict[str, float] = field(default_factory=dict)
    cost: dict[tuple[str, str], float] = field(default_factory=dict)
    idle_cost: dict[tuple[str, str, str], float] = field(default_factory=dict)
    waste: dict[tuple[str, str], float] = field(default_factory=dict)
    carbon: dict[tuple[str, str], float] = field(default_factory=dict)
    counters: dict[tuple[str, Labels], float] = field(default_factory=dict)
    pairs: PairCap = field(default_factory=PairCap)
    activity: ActivityBook = field(default_factory=ActivityBook)
    waste_basis: str = ""

    @property
    def identity(self) -> DeviceIdentity:
        """The device as of its latest reading."""
        return self.reading.identity


class _Known:
    """A process's snapshot in one report, and whether its owner was found within the label cap."""

    __slots__ = ("admitted", "process", "snapshot")

    def __init__(self, process: ProcessReading, snapshot: ProcessSnapshot) -> None:
        self.process = process  # held, so its id() names no other object while the report is ingested
        self.snapshot = snapshot
        self.admitted = False


@dataclass
class _CollectorBook:
    success: bool = False
    duration: float = 0.0
    last_sample: float | None = None


class Ledger:
    """Owns all state that grows over time; not thread-safe (the daemon's event loop drives it)."""

    def __init__(self, settings: AccountingSettings, max_label_values: int = 100) -> None:
        self._settings = settings
        self._devices: dict[str, _DeviceBook] = {}
        self._collectors: dict[str, _CollectorBook] = {}
        self._errors: dict[tuple[str, str], float] = {}
        self._cap = LabelCap(max_label_values)
        self._prices: dict[str, float] = {}
        self._context: HostContext | None = None
        self._version = 0
        self._device_pods: DevicePods | None = None
        self._device_jobs: DeviceJobs | None = None
        self._config_reload: ConfigReloadSnapshot | None = None
        self._refused: set[str] = set()  # counter problems already logged
        self._restored: dict[str, IdleMark] = {}  # by UUID, in ledger (monotonic) time, until first seen
        self._wall_now: float | None = None  # Unix time of the latest poll, for the carbon schedule
        # Per collector, its last report's process snapshots (see _owners).
        self._process_snapshots: dict[str, dict[ProcessReading, _Known]] = {}

    def set_device_pods(self, lookup: DevicePods | None) -> None:
        """Wire in which pods hold which devices (kubelet pod-resources), for devices with no process."""
        self._device_pods = lookup

    def set_device_jobs(self, lookup: DeviceJobs | None) -> None:
        """Wire in which Slurm jobs hold which devices (a job-mapping directory), for devices with no process."""
        self._device_jobs = lookup

    def restore_idle_clock(self, marks: Mapping[str, IdleMark], wall_offset: float) -> None:
        """Continue the idle clocks of an earlier run: marks in Unix time, by device UUID.

        `wall_offset` is Unix time minus the ledger's monotonic time, now. A device picks its mark
        up when first seen, so accel_idle_seconds goes on from where it was instead of from 0.
        """
        for uuid, mark in marks.items():
            self._restored[uuid] = _shifted(mark, -wall_offset)

    def idle_marks(self, wall_offset: float) -> dict[str, IdleMark]:
        """Every device's idle clock in Unix time, by UUID, to persist (see restore_idle_clock).

        Marks restored for devices not seen yet this run (a source still starting) are kept.
        """
        marks = {uuid: _shifted(mark, wall_offset) for uuid, mark in self._restored.items()}
        for book in self._devices.values():
            uuid = book.identity.uuid
            if uuid and book.state != NO_STATE:
                marks[uuid] = _shifted(IdleMark(book.last_active, book.state, book.state_since), wall_offset)
        return marks

    def update_settings(self, settings: AccountingSettings) -> None:
        """Apply a reloaded configuration; counters are kept."""
        self._settings = settings

    # --- input --------------------------------------------------------------------------------
    def ingest(self, report: SourceReport, context: HostContext, now: float, wall_now: float | None = None) -> None:
        """Integrate one source's poll; `now` is the ledger clock's monotonic time of the poll.

        `wall_now` (Unix time of the poll) places each interval on a carbon schedule; without it
        the fixed grid intensity applies.
        """
        self._context = context
        self._wall_now = wall_now
        self._record(report.collector, report.success, report.duration_seconds, report.errors)
        if report.stalled:
            return  # the late report will cover this interval when it arrives
        if any(r.up for r in report.devices):
            self._collectors[report.collector].last_sample = report.timestamp
        attributor = context.attributor
        host = attributor.host_owner(context.identity)  # once per report, not per device
        seen = set()
        first_seen = [r.identity.device for r in report.devices if r.identity.device not in self._devices]
        # One attribution and one snapshot per process per report: a Neuron runtime is listed on every
        # core it uses (32 runtimes x 32 cores is 1,024 entries of 32 processes on a trn1n.32xlarge),
        # one object for all (the core tracker shares them), so they are found by id(), which costs
        # nothing, not by value (a dataclass hash of seven fields per entry).
        owners: dict[int, _Known] = {}
        # Unchanged processes keep last report's snapshot objects, so the renderer finds them equal at a glance.
        previous = self._process_snapshots.get(report.collector, {})
        for reading in report.devices:
            seen.add(reading.identity.device)
            self._ingest_device(report.collector, reading, now, host, attributor, owners, previous)
        missing = [n for n, b in self._devices.items() if b.collector == report.collector and n not in seen]
        if report.complete:
            # Devices that vanished from a full enumeration (MIG reconfigured, hot-unplug) go away.
            for name in missing:
                del self._devices[name]
        else:
            # The source could not read its devices at all (neuron-monitor down): the ones it had
            # stay, shown down, and keep accruing time and cost like a lost GPU.
            for name in missing:
                down = DeviceReading(self._devices[name].identity, up=False)
                self._ingest_device(report.collector, down, now, host, attributor, owners, previous)
        # Replaced every report: it does not grow.
        self._process_snapshots[report.collector] = {known.process: known for known in owners.values()}
        self._reprice(context)
        for name in first_seen:
            self._open_money(self._devices[name], now)

    def record_collector(self, name: str, success: bool, duration: float, timestamp: float | None) -> None:
        """Self-metrics for a collector that is not a device source (price, metadata, kubernetes)."""
        self._record(name, success, duration, ())
        if success and timestamp is not None:
            self._collectors[name].last_sample = timestamp

    def record_config_reload(self, success: bool, timestamp: float) -> None:
        """The outcome of a configuration (re)load at Unix time `timestamp`; a failure keeps the last success time."""
        last = self._config_reload.last_success_timestamp if self._config_reload else None
        self._config_reload = ConfigReloadSnapshot(success, timestamp if success else last)

    def _refuse_counter(self, collector: str, problem: str) -> None:
        """A source offered a counter the catalogue does not define: count it, log it once."""
        self.count_error(collector, "unknown_metric")
        if problem not in self._refused:
            self._refused.add(problem)
            log.error("collector %s: counter refused, %s (a bug in the source: please report it)", collector, problem)

    def count_error(self, collector: str, reason: str, count: int = 1) -> None:
        """Add to accel_exporter_errors_total{collector, reason}."""
        key = (collector, reason)
        self._errors[key] = self._errors.get(key, 0.0) + count

    def _record(self, name: str, success: bool, duration: float, errors: tuple[tuple[str, int], ...]) -> None:
        book = self._collectors.setdefault(name, _CollectorBook())
        book.success = success
        book.duration = duration
        for reason, count in errors:
            self.count_error(name, reason, count)

    def _reprice(self, context: HostContext) -> None:
        self._prices = device_prices(context.price, [b.identity for b in self._devices.values()])

    def _ingest_device(
        self,
        collector: str,
        reading: DeviceReading,
        now: float,
        host: Owner,
        attributor: Attributor,
        owners: dict[int, _Known],
        previous: Mapping[ProcessReading, _Known],
    ) -> None:
        name = reading.identity.device
        book = self._devices.get(name)
        restored = book is None and bool(reading.identity.uuid) and reading.identity.uuid in self._restored
        if book is None:
            book = self._devices[name] = self._new_book(collector, reading, now)
        dt = max(0.0, now - book.last_time)
        book.last_time = now
        book.reading = reading
        settings = self._settings
        vouched = _vouched_share(reading)
        # The first poll after a start may have no utilization sample yet. For a whole GPU whose
        # idle clock was restored (state directory, demo history) that is no sign of activity: the
        # restored state holds, so a restart does not reset the clock of a device still idle. The
        # first poll charges no interval (dt is 0), so nothing else changes. (MIG instances without
        # GPM never report activity: they are classified as always.)
        unmeasured = reading.up and reading.utilization is None and reading.identity.kind == "gpu"
        if restored and unmeasured and not reading.identity.mig_parent:
            vouched = 0.0
        # Time the source could not vouch for is charged to no state; with nothing known, the state holds.
        state = classify(reading, settings.idle_threshold, settings.noise_floor) if vouched else book.state
        if state != book.state:
            book.state_since = now
        book.state = state
        # A fully sliced MIG parent is not idle: its slices are.
        if state in (ACTIVE, NO_STATE) and vouched:
            book.last_active = now
        if state != NO_STATE and vouched:
            book.state_seconds[state] = book.state_seconds.get(state, 0.0) + dt * vouched
        if reading.busy_seconds is not None:
            book.busy_total += reading.busy_seconds
            book.has_busy = True
        book.activity.add(reading)
        activity, book.waste_basis = waste_activity(settings.waste_basis, reading)
        joules = self._energy(book, reading.energy_joules)
        energy_span = dt  # the time the joules were drawn over
        if joules is not None:
            # The counter is read only every few polls: its increment covers the time since the last read.
            energy_span = now - book.energy_read_at if book.energy_read_at is not None else 0.0
            book.energy_read_at = now
        if joules is None and book.energy_total is None and reading.power_watts is not None and reading.up:
            # No energy counter ever (one read only every few polls still counts): power x time.
            joules = reading.power_watts * dt
        book.processes, book.owner = self._owners(reading, host, attributor, owners, previous)
        for delta in reading.counters:
            problem = counter_problem(delta.metric, tuple(label for label, _ in delta.labels))
            if problem is not None:
                self._refuse_counter(collector, problem)
                continue
            key = (delta.metric, delta.labels)
            book.counters[key] = book.counters.get(key, 0.0) + delta.value
        price = self._prices.get(name)
        quote = self._context.price if self._context is not None else None
        carbon = quote.carbon if quote is not None else None
        if dt <= 0 or (price is None and (carbon is None or not joules)):
            return
        owner_key = self._charged_pair(book, now)
        kwh = (joules or 0.0) / JOULES_PER_KWH
        if carbon is not None and joules is not None:
            wall = self._wall_now
            grams = carbon.grams(kwh, wall - energy_span if wall is not None else None, wall)
            book.carbon[owner_key] = book.carbon.get(owner_key, 0.0) + grams
        if price is None:
            return
        # Owned hardware: the electricity the device drew this interval, at tariff x PUE.
        energy_dollars = kwh * quote.energy_dollars_per_kwh if quote is not None else 0.0
        dollars = price / SECONDS_PER_HOUR * dt + energy_dollars
        book.cost[owner_key] = book.cost.get(owner_key, 0.0) + dollars
        if state in IDLE_STATES and vouched:
            idle_key = (*owner_key, state)
            book.idle_cost[idle_key] = book.idle_cost.get(idle_key, 0.0) + dollars * vouched
        if (reading.utilization is not None or state != ACTIVE) and vouched:
            # Unknown activity (MIG) on a device nobody holds, or a lost device, does no work.
            target = settings.target_utilization
            waste = dollars * vouched * max(0.0, target - activity) / target
            book.waste[owner_key] = book.waste.get(owner_key, 0.0) + waste

    def _new_book(self, collector: str, reading: DeviceReading, now: float) -> _DeviceBook:
        book = _DeviceBook(collector, now, now, now, reading, state_since=now)
        mark = self._restored.pop(reading.identity.uuid, None) if reading.identity.uuid else None
        if mark is not None:  # seen in an earlier run: its idle clock goes on
            book.last_active = min(now, mark.last_active)
            book.state, book.state_since = mark.state, min(now, mark.state_since)
        return book

    def _open_money(self, book: _DeviceBook, now: float) -> None:
        """A priced device's money counters start at 0 on its first poll, under its owner and state,
        so the team that alerts route by is on /metrics from the first scrape, and Prometheus sees
        the whole first interval as an increase."""
        if self._prices.get(book.identity.device) is None:
            return
        pair = self._charged_pair(book, now)
        book.cost.setdefault(pair, 0.0)
        book.waste.setdefault(pair, 0.0)
        if book.state in IDLE_STATES:
            book.idle_cost.setdefault((*pair, book.state), 0.0)

    def _charged_pair(self, book: _DeviceBook, now: float) -> Pair:
        """The (team, workload) this interval is charged to, within the device's pair cap (see pair_cap)."""
        pair = (book.owner.team, book.owner.workload)
        charged = book.pairs.admit(pair, now, self._settings.max_pairs_per_device)
        if charged != pair:
            self._cap.count_overflow("pair")
        expired = book.pairs.expire(now, self._settings.pair_expiry_seconds)
        if expired:
            fold_into_other(expired, book.cost)
            fold_into_other(expired, book.idle_cost)
            fold_into_other(expired, book.waste)
            fold_into_other(expired, book.carbon)
        return charged

    @staticmethod
    def _energy(book: _DeviceBook, raw: float | None) -> float | None:
        """Add the driver's energy reading to the device's counter; the joules added (None: no counter)."""
        if raw is None:
            return None
        added = 0.0
        if book.energy_total is None:
            book.energy_total = 0.0
        elif book.energy_raw is not None:
            # The driver's counter restarts at 0 on driver reload or GPU reset: keep ours monotonic.
            added = raw - book.energy_raw if raw >= book.energy_raw else raw
            book.energy_total += added
        book.energy_raw = raw
        return added

    def _capped(self, owner: Owner) -> Owner:
        """The owner with team and workload counted against the label cap (overflow becomes `other`)."""
        team = self._cap.admit("team", owner.team)
        workload = self._cap.admit("workload", owner.workload)
        if team == owner.team and workload == owner.workload:
            return owner  # the usual case; a copy would cost a dataclasses.replace per process per poll
        return replace(owner, team=team, workload=workload)

    def _owners(
        self,
        reading: DeviceReading,
        host: Owner,
        attributor: Attributor,
        owners: dict[int, _Known],
        previous: Mapping[ProcessReading, _Known],
    ) -> tuple[tuple[ProcessSnapshot, ...], Owner]:
        """The device's processes as snapshots and its owner.

        `owners` remembers each process's snapshot within a report, by id(); `previous` holds the
        last report's by value, reused when the process and its owner are unchanged.
        """
        processes = []
        best: tuple[int, Owner] | None = None
        for proc in reading.processes:
            entry = owners.get(id(proc))
            if entry is None:
                owner = attributor.process_owner(proc)
                if not owner.team:
                    owner = replace(owner, team=host.team, workload=owner.workload or host.workload)
                last = previous.get(proc)  # the same facts: the same user and command labels
                known = last.snapshot if last is not None else None
                if known is None or known.owner != owner:
                    known = ProcessSnapshot(
                        proc.pid,
                        # Untrusted text from /proc or the runtime: no control characters, bounded.
                        sanitize_label(proc.user, USER_LABEL_LENGTH),
                        sanitize_label(proc.command, COMMAND_LABEL_LENGTH),
                        owner,
                        proc.used_memory_bytes,
                        proc.start_time_seconds,
                    )
                entry = owners[id(proc)] = _Known(proc, known)
            known = entry.snapshot
            if entry.admitted:
                owner = known.owner
                processes.append(known)
            else:
                # Per entry, not per process: an overflowing value is counted each time it is replaced.
                owner = self._capped(known.owner)
                if owner is known.owner:
                    entry.admitted = True  # values once admitted stay admitted: its other entries are within the cap
                    processes.append(known)
                else:
                    processes.append(replace(known, owner=owner))
            memory = proc.used_memory_bytes or 0
            if best is None or memory > best[0]:
                best = (memory, owner)
        held_by = self._held_by(reading, attributor) if best is None else None
        if best is not None:
            device_owner = Owner(best[1].team, best[1].workload)
        elif held_by is not None:
            device_owner = held_by
        else:
            device_owner = self._capped(Owner(host.team or UNASSIGNED, host.workload))
        processes.sort(key=lambda p: (-(p.memory_bytes or 0), p.pid))
        limit = self._settings.max_processes_per_device if self._settings.export_processes else 0
        return tuple(processes[:limit]), device_owner

    def _held_by(self, reading: DeviceReading, attributor: Attributor) -> Owner | None:
        """A device no process holds may still be allocated: to a pod (requested, then left idle) or
        to a Slurm job whose processes are out of sight (dcgm-exporter's job-mapping directory)."""
        return self._first_owner(self._device_pods, reading.identity, attributor.pod_owner) or self._first_owner(
            self._device_jobs, reading.identity, attributor.job_owner
        )

    def _first_owner(
        self,
        lookup: Callable[[DeviceIdentity], Sequence[T]] | None,
        identity: DeviceIdentity,
        owner_of: Callable[[T], Owner],
    ) -> Owner | None:
        """The capped owner of the first holder `lookup` lists for the device that some rule gives a team."""
        if lookup is None:
            return None
        try:
            holders = lookup(identity)
        except Exception:  # a lookup problem must not stop accounting
            return None
        for holder in holders:
            owner = owner_of(holder)
            if owner.team:
                return self._capped(Owner(owner.team, owner.workload))
        return None

    # --- output -------------------------------------------------------------------------------
    def snapshot(self, now: float) -> Snapshot:
        """An immutable view of everything, for exposition."""
        self._version += 1
        context = self._context
        devices = tuple(
            self._device_snapshot(book, now)
            for _, book in sorted(self._devices.items(), key=lambda kv: _natural(kv[0]))
        )
        collectors = tuple(
            CollectorSnapshot(n, b.success, b.duration, b.last_sample) for n, b in sorted(self._collectors.items())
        )
        return Snapshot(
            version=self._version,
            devices=devices,
            identity=context.identity if context else HostIdentity(),
            price=context.price if context else PriceQuote(),
            collectors=collectors,
            errors=tuple(sorted(self._errors.items())),
            label_overflow=tuple(sorted((k, float(v)) for k, v in self._cap.overflow.items())),
            build_version=__version__,
            config_reload=self._config_reload,
            grid_intensity=context.price.carbon.in_force(self._wall_now) if context and context.price.carbon else None,
        )

    def _device_snapshot(self, book: _DeviceBook, now: float) -> DeviceSnapshot:
        reading = book.reading
        return DeviceSnapshot(
            identity=book.identity,
            up=reading.up,
            utilization=reading.utilization if reading.up else None,
            busy_seconds_total=book.busy_total,
            has_busy=book.has_busy,
            memory_used_bytes=reading.memory_used_bytes,
            memory_total_bytes=reading.memory_total_bytes,
            power_watts=reading.power_watts,
            energy_joules_total=book.energy_total,
            process_count=len(reading.processes),
            processes=book.processes,
            state=book.state,
            state_seconds=tuple(sorted(book.state_seconds.items())),
            idle_seconds=0.0 if book.state in (ACTIVE, NO_STATE) else max(0.0, now - book.last_active),
            price_per_hour=self._prices.get(book.identity.device),
            owner=book.owner,
            cost=tuple(sorted(book.cost.items())),
            idle_cost=tuple(sorted(book.idle_cost.items())),
            waste=tuple(sorted(book.waste.items())),
            carbon=tuple(sorted(book.carbon.items())),
            counters=tuple(sorted((m, labels, v) for (m, labels), v in book.counters.items())),
            activity=book.activity.snapshot(),
            waste_basis=book.waste_basis if book.state != NO_STATE else "",
        )


def _shifted(mark: IdleMark, offset: float) -> IdleMark:
    return IdleMark(mark.last_active + offset, mark.state, mark.state_since + offset)


def _vouched_share(reading: DeviceReading) -> float:
    """The share of the interval the source vouches for: 1.0 unless part of it was unknown."""
    if reading.unknown_seconds <= 0:
        return 1.0
    return reading.covered_seconds / (reading.covered_seconds + reading.unknown_seconds)


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort nvidia2 before nvidia10."""
    return tuple((0, int(part)) if part.isdecimal() else (1, part) for part in re.split(r"(\d+)", name) if part)
