"""From FleetData to the Report: per-host money and utilization, findings, recommendations."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.report.collect import DeviceKey, FleetData, MoneyKey
from exporter.report.instance_types import CATALOGUE_DATE, cheaper_fits, lookup
from exporter.report.model import (
    MONTH_HOURS,
    MONTH_SECONDS,
    Finding,
    Host,
    Recommendation,
    Report,
    TeamMoney,
    Timeline,
    Totals,
)

IDLE_UTILIZATION = 0.01  # "about 0 % busy": the exporter's default idle threshold
IDLE_TIME_FRACTION = 0.95  # idle over the range: in an idle state at least this much of the time
HELD_TIME_FRACTION = 0.90  # held over the range: idle_held at least this much of the time
ABANDONED_AGE = 14 * 86400.0
LONG_RUNNING_AGE = 86400.0
UTILIZATION_CHECK = 0.10  # AcceleratorLongRunningLowUtilization's line
SCALE_IN = 0.40  # the bundle's scale-in line
TARGET = 0.70  # the bundle's scale-out line: shrink to what p95 busy needs at this utilization
MEMORY_HEADROOM = 1.10
GIB = 2.0**30


@dataclass(frozen=True)
class _Device:
    key: DeviceKey
    observed: float
    busy: float
    idle_fraction: float
    held_fraction: float
    team: str

    @property
    def utilization(self) -> float:
        return self.busy / self.observed if self.observed > 0 else 0.0


def _sum(values: Iterable[float]) -> float:
    return math.fsum(values)


ByDevice = dict[str, dict[str, float]]  # instance -> device -> value


def _index_money(rows: Mapping[MoneyKey, float]) -> ByDevice:
    out: ByDevice = defaultdict(lambda: defaultdict(float))
    for (instance, device, _, _), value in rows.items():
        out[instance][device] += value
    return out


@dataclass(frozen=True)
class _Index:
    """FleetData regrouped by host once, so the analysis never scans the whole fleet per host."""

    cost: ByDevice
    idle: ByDevice
    waste: ByDevice
    team_spend: dict[str, dict[str, dict[str, float]]]  # instance -> device -> team -> spend
    devices: dict[str, list[str]]

    @classmethod
    def build(cls, data: FleetData) -> _Index:
        team_spend: dict[str, dict[str, dict[str, float]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(float))
        )
        for (instance, device, team, _), value in data.cost.items():
            team_spend[instance][device][team] += value
        devices: dict[str, set[str]] = defaultdict(set)
        for instance, device in (*data.states, *data.busy):
            devices[instance].add(device)
        return cls(
            cost=_index_money(data.cost),
            idle=_index_money(data.idle),
            waste=_index_money(data.waste),
            team_spend=team_spend,
            devices={k: sorted(v) for k, v in devices.items()},
        )

    def teams_by_spend(self, instance: str, device: str | None = None) -> list[str]:
        """Teams charged for the host (or one device), most first."""
        spend: dict[str, float] = defaultdict(float)
        for dev, teams in self.team_spend.get(instance, {}).items():
            if device is None or dev == device:
                for team, value in teams.items():
                    spend[team] += value
        return sorted(spend, key=lambda t: (-spend[t], t))


def _money_of(rows: ByDevice, instance: str, device: str | None = None) -> float:
    per_device = rows.get(instance, {})
    if device is not None:
        return per_device.get(device, 0.0)
    return _sum(per_device.values())


def _devices(data: FleetData, index: _Index, instance: str, host_team: str) -> list[_Device]:
    out = []
    for name in index.devices.get(instance, []):
        key = (instance, name)
        states = data.states.get(key, {})
        observed = _sum(states.values())
        idle = states.get("idle_held", 0.0) + states.get("idle_free", 0.0)
        teams = index.teams_by_spend(instance, name)
        out.append(
            _Device(
                key=key,
                observed=observed,
                busy=min(data.busy.get(key, 0.0), observed) if observed else data.busy.get(key, 0.0),
                idle_fraction=idle / observed if observed > 0 else 0.0,
                held_fraction=states.get("idle_held", 0.0) / observed if observed > 0 else 0.0,
                team=teams[0] if teams else host_team,
            )
        )
    return out


def _priced(data: FleetData, index: _Index, instance: str) -> bool:
    source = data.info.get(instance, {}).get("price_source")
    if source is not None:
        return source != "none"
    return instance in index.cost


def _per_month(dollars: float | None, range_seconds: float) -> float | None:
    return None if dollars is None else dollars * MONTH_SECONDS / range_seconds


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.0f} h" if seconds < 3 * 86400 else f"{seconds / 86400:.1f} days"


class _Analysis:
    def __init__(self, data: FleetData) -> None:
        self.data = data
        self.index = _Index.build(data)
        self.range = data.end - data.start
        self.hosts: list[Host] = []
        self.findings: list[Finding] = []
        self.recommendations: list[Recommendation] = []
        self.stopped: set[str] = set()

    def run(self) -> None:
        data = self.data
        instances = sorted({*data.info, *(i for i, _ in data.states), *(i for i, _ in data.busy)})
        for instance in instances:
            self._host(instance)
        self._shrink_groups()
        self._moves()

    def _host(self, instance: str) -> None:
        data = self.data
        info = data.info.get(instance, {})
        priced = _priced(data, self.index, instance)
        teams = self.index.teams_by_spend(instance)
        host_team = teams[0] if teams else "unassigned"
        devices = _devices(data, self.index, instance, host_team)
        observed = _sum(d.observed for d in devices)
        mean = _sum(d.busy for d in devices) / observed if observed > 0 else None
        p95_busy = data.host_busy_p95.get(instance)
        p95 = min(1.0, p95_busy / len(devices)) if p95_busy is not None and devices else None
        peaks = [data.memory_peak[d.key] for d in devices if d.key in data.memory_peak]
        money = [
            _money_of(rows, instance) if priced else None
            for rows in (self.index.cost, self.index.idle, self.index.waste)
        ]
        self.hosts.append(
            Host(
                instance=instance,
                instance_type=info.get("instance_type", ""),
                instance_id=info.get("instance_id", ""),
                teams=tuple(teams),
                devices=len(devices),
                models=tuple(sorted({data.models[d.key] for d in devices if data.models.get(d.key)})),
                price_source=info.get("price_source", "unknown"),
                price_dollars_per_hour=data.instance_price.get(instance) if priced else None,
                spend_dollars=money[0],
                idle_dollars=money[1],
                waste_dollars=money[2],
                utilization_mean=mean,
                utilization_p95=p95,
                memory_used_peak_bytes=max(peaks) if peaks else None,
            )
        )
        if devices:
            self._findings(self.hosts[-1], devices, priced)

    def _findings(self, host: Host, devices: list[_Device], priced: bool) -> None:
        data, end = self.data, self.data.end
        instance = host.instance
        idle = [d for d in devices if d.utilization <= IDLE_UTILIZATION and d.idle_fraction >= IDLE_TIME_FRACTION]
        held = [d for d in idle if d.held_fraction >= HELD_TIME_FRACTION]
        flagged: set[DeviceKey] = set()
        if len(idle) == len(devices) and not held:
            idle_for = [data.idle_seconds[d.key] for d in devices if d.key in data.idle_seconds]
            since = end - min(idle_for) if len(idle_for) == len(devices) else data.start
            self._add(
                "idle_host",
                instance,
                None,
                host.teams[0] if host.teams else "unassigned",
                max(since, 0.0),
                host.idle_dollars,
                f"all {len(devices)} devices idle over the range (mean utilization "
                f"{100 * (host.utilization_mean or 0):.1f} %), no process holding them",
            )
            self._stop(host, "whole instance idle over the range")
            return
        abandoned_devices = []
        for device in held:
            started = data.oldest_process.get(device.key)
            age = end - started if started is not None else None
            kind = "abandoned" if age is not None and age >= ABANDONED_AGE else "held_idle"
            held_for = f", its process started {_hours(age)} before the end" if age is not None else ""
            self._add(
                kind,
                instance,
                device.key[1],
                device.team,
                started,
                _money_of(self.index.idle, instance, device.key[1]) if priced else None,
                f"held by a process but idle {100 * device.held_fraction:.0f} % of the range "
                f"(utilization {100 * device.utilization:.1f} %){held_for}",
            )
            flagged.add(device.key)
            if kind == "abandoned":
                abandoned_devices.append(device)
        if abandoned_devices and len(abandoned_devices) == len(devices):
            self._stop(host, "every device held by an abandoned process")
        else:
            for device in abandoned_devices:
                self._release(host, device)
        for device in devices:
            started = data.oldest_process.get(device.key)
            busiest = data.busiest_hour.get(device.key)
            if device.key in flagged or started is None or busiest is None:
                continue
            if end - started >= LONG_RUNNING_AGE and busiest < UTILIZATION_CHECK:
                self._add(
                    "long_running_unchecked",
                    instance,
                    device.key[1],
                    device.team,
                    started,
                    _money_of(self.index.waste, instance, device.key[1]) if priced else None,
                    f"a process running {_hours(end - started)}; no hour above "
                    f"{100 * UTILIZATION_CHECK:.0f} % (busiest hour {100 * busiest:.1f} %)",
                )
                flagged.add(device.key)
        mean = host.utilization_mean
        if priced and mean is not None and mean < SCALE_IN and len(flagged) < len(devices):
            waste = host.waste_dollars
            if waste is not None:
                waste -= _sum(_money_of(self.index.waste, instance, key[1]) for key in flagged)
            self._add(
                "underutilized",
                instance,
                None,
                host.teams[0] if host.teams else "unassigned",
                data.start,
                waste,
                f"mean utilization {100 * mean:.1f} % over the range, under the {100 * SCALE_IN:.0f} % scale-in line"
                + (f"; p95 {100 * host.utilization_p95:.1f} %" if host.utilization_p95 is not None else ""),
            )

    def _add(
        self,
        kind: str,
        instance: str,
        device: str | None,
        team: str,
        since: float | None,
        dollars: float | None,
        ev: str,
    ) -> None:
        self.findings.append(Finding(kind, instance, device, team, since, dollars, _per_month(dollars, self.range), ev))

    def _stop(self, host: Host, why: str) -> None:
        self.stopped.add(host.instance)
        price = host.price_dollars_per_hour
        if price is None:
            return
        self.recommendations.append(
            Recommendation(
                target=host.instance,
                target_kind="instance",
                action="stop",
                current=f"{host.instance_type or 'instance'} running at ${price:.2f}/h",
                proposed="stopped",
                monthly_savings_dollars=price * MONTH_HOURS,
                assumptions=f"{why}; saves the exporter's instance price x {MONTH_HOURS:.0f} h a month",
            )
        )

    def _release(self, host: Host, device: _Device) -> None:
        price = self.data.device_price.get(device.key)
        if price is None or host.price_dollars_per_hour is None:
            return
        self.recommendations.append(
            Recommendation(
                target=f"{host.instance}/{device.key[1]}",
                target_kind="device",
                action="stop the abandoned process and reuse the device",
                current=f"{device.key[1]} held idle at ${price:.2f}/h",
                proposed="process stopped; device free for other work",
                monthly_savings_dollars=price * MONTH_HOURS,
                assumptions="the freed device replaces capacity bought elsewhere; device price x 720 h a month",
            )
        )

    def _shrink_groups(self) -> None:
        groups: dict[tuple[str, str], list[Host]] = defaultdict(list)
        for host in self.hosts:
            if host.instance in self.stopped or host.price_dollars_per_hour is None or not host.devices:
                continue
            if host.instance not in self.data.host_busy_p95:
                continue
            groups[(host.instance_type, host.teams[0] if host.teams else "unassigned")].append(host)
        for (instance_type, team), hosts in sorted(groups.items()):
            per_host = hosts[0].devices
            if any(h.devices != per_host for h in hosts):
                continue
            busy = _sum(self.data.host_busy_p95[h.instance] for h in hosts)
            needed_devices = math.ceil(busy / TARGET - 1e-9)
            needed_hosts = max(1, math.ceil(needed_devices / per_host))
            if needed_hosts >= len(hosts):
                continue
            price = _sum(h.price_dollars_per_hour or 0.0 for h in hosts) / len(hosts)
            self.recommendations.append(
                Recommendation(
                    target=f"{instance_type or 'unknown type'} team={team}",
                    target_kind="group",
                    action="shrink",
                    current=f"{len(hosts)} x {instance_type} ({len(hosts) * per_host} devices): "
                    + ", ".join(h.instance for h in hosts),
                    proposed=f"{needed_hosts} x {instance_type} ({needed_devices} devices needed)",
                    monthly_savings_dollars=(len(hosts) - needed_hosts) * price * MONTH_HOURS,
                    assumptions=f"p95 hourly busy of the group {busy:.2f} device-equivalents (sum of each host's p95, "
                    f"an upper bound) served at {100 * TARGET:.0f} % utilization; the work can be packed on fewer hosts",
                )
            )

    def _moves(self) -> None:
        for host in self.hosts:
            current = lookup(host.instance_type)
            if (
                current is None
                or current.dollars_per_hour is None
                or host.instance in self.stopped
                or host.price_dollars_per_hour is None
                or host.memory_used_peak_bytes is None
                or host.devices != current.devices
            ):
                continue
            needed_gib = host.memory_used_peak_bytes / GIB * MEMORY_HEADROOM
            proposed = cheaper_fits(current, current.devices, needed_gib)
            if proposed is None or proposed.dollars_per_hour is None:
                continue
            self.recommendations.append(
                Recommendation(
                    target=host.instance,
                    target_kind="instance",
                    action="move to a cheaper instance type",
                    current=f"{current.name}: {current.devices} x {current.model} "
                    f"{current.memory_gib_per_device:g} GiB, ${current.dollars_per_hour:.2f}/h",
                    proposed=f"{proposed.name}: {proposed.devices} x {proposed.model} "
                    f"{proposed.memory_gib_per_device:g} GiB, ${proposed.dollars_per_hour:.2f}/h",
                    monthly_savings_dollars=(current.dollars_per_hour - proposed.dollars_per_hour) * MONTH_HOURS,
                    assumptions=f"peak memory {host.memory_used_peak_bytes / GIB:.1f} GiB per device fits with "
                    f"{100 * (MEMORY_HEADROOM - 1):.0f} % headroom; list prices of the built-in catalogue "
                    f"({CATALOGUE_DATE}); a {proposed.model} is NOT assumed as fast as a {current.model}: "
                    "benchmark the workload first",
                )
            )


def _teams(data: FleetData) -> tuple[TeamMoney, ...]:
    money: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for index, rows in enumerate((data.cost, data.idle, data.waste)):
        for (_, _, team, workload), value in rows.items():
            money[(team, workload)][index] += value
    items = [TeamMoney(t, w, *m) for (t, w), m in money.items()]
    return tuple(sorted(items, key=lambda m: (-m.spend_dollars, m.team, m.workload)))


def gaps(data: FleetData) -> list[str]:
    """One line per host with steps missing between its first and last data: the range has gaps."""
    problems = []
    for instance, values in sorted(data.timeline.items()):
        present = [i for i, v in enumerate(values) if v is not None]
        if not present:
            continue
        missing = [i for i in range(present[0], present[-1] + 1) if values[i] is None]
        if missing:
            first = data.timeline_start + (missing[0] - 1) * data.timeline_step
            problems.append(
                f"{instance}: no data for {len(missing) * data.timeline_step / 3600:.0f} h of the range "
                f"(from about {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime(first))}): exporter down or scrapes "
                "failing, so its money over the gap is missing"
            )
    return problems


def analyse(
    data: FleetData,
    source: str,
    selector: str,
    extra_findings: Iterable[Finding] = (),
    extra_problems: Iterable[str] = (),
    now: float | None = None,
) -> Report:
    """Build the report from the server's answers (and the cloud's findings, if any)."""
    analysis = _Analysis(data)
    analysis.run()
    problems = gaps(data) + list(extra_problems)
    totals = Totals(
        spend_dollars=_sum(data.cost.values()),
        idle_dollars=_sum(data.idle.values()),
        waste_dollars=_sum(data.waste.values()),
        range_seconds=data.end - data.start,
        start=data.start,
        end=data.end,
    )
    findings = [*analysis.findings, *extra_findings]
    findings.sort(key=lambda f: (-(f.dollars or 0.0), f.kind, f.instance, f.device or ""))
    recommendations = sorted(analysis.recommendations, key=lambda r: (-r.monthly_savings_dollars, r.target))
    hosts = sorted(analysis.hosts, key=lambda h: (-(h.waste_dollars or 0.0), h.instance))
    return Report(
        source=source,
        selector=selector,
        generated_at=time.time() if now is None else now,
        partial=bool(problems),
        problems=tuple(problems),
        totals=totals,
        hosts=tuple(hosts),
        teams=_teams(data),
        findings=tuple(findings),
        recommendations=tuple(recommendations),
        timeline=Timeline(data.timeline_start, data.timeline_step, dict(data.timeline)),
        queries=data.queries,
    )
