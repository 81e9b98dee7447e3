"""Run the report's queries concurrently and gather the answers into FleetData."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.report.args import ReportOptions
from exporter.report.client import PromClient, Sample
from exporter.report.errors import ReportFailed
from exporter.report.queries import HOUR, Queries

DeviceKey = tuple[str, str]  # (instance, device)
MoneyKey = tuple[str, str, str, str]  # (instance, device, team, workload)
# The timeline has about this many steps, never finer than an hour.
TIMELINE_STEPS = 168


@dataclass(frozen=True)
class FleetData:
    """Everything the server answered, keyed by host or device; no analysis yet."""

    start: float
    end: float
    cost: Mapping[MoneyKey, float]
    idle: Mapping[MoneyKey, float]
    waste: Mapping[MoneyKey, float]
    states: Mapping[DeviceKey, Mapping[str, float]]
    busy: Mapping[DeviceKey, float]
    busiest_hour: Mapping[DeviceKey, float]
    host_busy_p95: Mapping[str, float]
    memory_peak: Mapping[DeviceKey, float]
    models: Mapping[DeviceKey, str]
    device_price: Mapping[DeviceKey, float]
    info: Mapping[str, Mapping[str, str]]
    instance_price: Mapping[str, float]
    oldest_process: Mapping[DeviceKey, float]
    idle_seconds: Mapping[DeviceKey, float]
    timeline_start: float
    timeline_step: float
    timeline: Mapping[str, tuple[float | None, ...]]
    queries: int


def _finite(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if math.isfinite(s.value)]


def _by_device(samples: list[Sample]) -> dict[DeviceKey, float]:
    return {(s.labels.get("instance", ""), s.labels.get("device", "")): s.value for s in _finite(samples)}


def _by_money(samples: list[Sample]) -> dict[MoneyKey, float]:
    out: dict[MoneyKey, float] = {}
    for s in _finite(samples):
        key = (
            s.labels.get("instance", ""),
            s.labels.get("device", ""),
            s.labels.get("team", "unassigned"),
            s.labels.get("workload", ""),
        )
        out[key] = out.get(key, 0.0) + s.value
    return out


def _states(samples: list[Sample]) -> dict[DeviceKey, dict[str, float]]:
    out: dict[DeviceKey, dict[str, float]] = {}
    for s in _finite(samples):
        key = (s.labels.get("instance", ""), s.labels.get("device", ""))
        out.setdefault(key, {})[s.labels.get("state", "")] = s.value
    return out


def _info(samples: list[Sample]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for s in samples:
        instance = s.labels.get("instance", "")
        # A host whose price became known during the range has two series: keep the priced one.
        if instance not in out or out[instance].get("price_source") == "none":
            out[instance] = dict(s.labels)
    return out


def timeline_step(range_seconds: float) -> float:
    """Timeline step: about TIMELINE_STEPS steps, whole hours."""
    return max(HOUR, math.ceil(range_seconds / TIMELINE_STEPS / HOUR) * HOUR)


async def collect(options: ReportOptions, progress: Callable[[int, int], None] | None) -> FleetData:
    """Query the server; ReportFailed when it fails or holds no exporter series in the range."""
    q = Queries(options.selector, options.range_seconds)
    end = options.end
    start = end - options.range_seconds
    step = timeline_step(options.range_seconds)
    async with PromClient(options.client, progress) as client:
        # 15 instant queries, then the timeline (one range query, more if it is chunked).
        client.expected = 16
        (
            cost,
            idle,
            waste,
            states,
            busy,
            busiest,
            p95,
            memory,
            models,
            device_price,
            info,
            instance_price,
            oldest,
            idle_seconds,
            rules,
        ) = await asyncio.gather(
            client.instant(q.money("accel_cost_dollars_total"), end),
            client.instant(q.money("accel_idle_cost_dollars_total"), end),
            client.instant(q.money("accel_waste_dollars_total"), end),
            client.instant(q.state_seconds(), end),
            client.instant(q.busy_seconds(), end),
            client.instant(q.busiest_hour(), end),
            client.instant(q.host_busy_p95(), end),
            client.instant(q.memory_peak(), end),
            client.instant(q.device_info(), end),
            client.instant(q.device_price(), end),
            client.instant(q.instance_info(), end),
            client.instant(q.instance_price(), end),
            client.instant(q.oldest_process(), end),
            client.instant(q.idle_seconds(), end),
            client.instant(q.rules_present(), end),
        )
        if not states and not busy and not info:
            where = f"{{{options.selector}}}" if options.selector else "(no --selector)"
            raise ReportFailed(
                f"no exporter series (accel_state_seconds_total, accel_instance_info) in the range "
                f"{start:.0f}..{end:.0f} matching {where} at {options.client.url}: check --selector, --end and --range"
            )
        use_rule = bool(rules) and rules[0].value > 0
        # First step one step after the start: each step covers the window before it.
        first = start + step
        series = await client.range(q.host_utilization(step, use_rule), first, end, step)
        count = round((end - first) / step) + 1
        timeline: dict[str, tuple[float | None, ...]] = {}
        for item in series:
            values: list[float | None] = [None] * count
            for t, v in item.points:
                index = round((t - first) / step)
                if 0 <= index < count and math.isfinite(v):
                    values[index] = v
            timeline[item.labels.get("instance", "")] = tuple(values)
        queries = client.done
    return FleetData(
        start=start,
        end=end,
        cost=_by_money(cost),
        idle=_by_money(idle),
        waste=_by_money(waste),
        states=_states(states),
        busy=_by_device(busy),
        busiest_hour=_by_device(busiest),
        host_busy_p95={s.labels.get("instance", ""): s.value for s in _finite(p95)},
        memory_peak=_by_device(memory),
        models={(s.labels.get("instance", ""), s.labels.get("device", "")): s.labels.get("model", "") for s in models},
        device_price=_by_device(device_price),
        info=_info(info),
        instance_price={s.labels.get("instance", ""): s.value for s in _finite(instance_price)},
        oldest_process=_by_device(oldest),
        idle_seconds=_by_device(idle_seconds),
        timeline_start=first,
        timeline_step=step,
        timeline=timeline,
        queries=queries,
    )
