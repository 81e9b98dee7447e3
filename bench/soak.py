"""Soak and churn in accelerated time: days of fleet life against the real NVML source, ledger and exposition.

The simulated driver (exporter.sim.fake_nvml) and the real `NvmlSource`, `Ledger` and `RenderCache`
run on a `ManualClock`: nothing sleeps, the clock is advanced one poll interval at a time, so a
simulated day takes well under a minute. Prices change during the run through the context's
PriceQuote. Alongside, `Truth` integrates the scenario's own patterns and process lifetimes
(not the simulator's answers) so every counter can be compared with the exact ground truth.

    python bench/soak.py                      # 24 simulated hours at 15 s, then 1 hour behind HTTP
    python bench/soak.py --hours 6 --http-hours 0

The tests (tests/system/test_reliability_soak.py) import this file and run shorter versions of the same.
"""

# ruff: noqa: E402  (the checkout goes on sys.path before the exporter's imports)
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/soak.py` from a checkout, without installing

import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.accounting.ledger import Ledger
from exporter.accounting.pair_cap import OTHER_PAIR
from exporter.accounting.states import ACTIVE, IDLE_FREE, IDLE_HELD
from exporter.catalogue import STATES
from exporter.clock import ManualClock
from exporter.config import Config, parse_config
from exporter.config.model import AccountingSettings
from exporter.context.host.metadata import merge_identity
from exporter.context.model import UNASSIGNED, HostContext, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.exposition.render import RenderCache
from exporter.readings import SourceReport
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.scenario import Scenario, SimProcess, parse_scenario
from exporter.sources.nvml import NvmlSource

HOUR = 3600.0
K = TypeVar("K")

# Eight GPUs whose load follows repeating schedules (busy, idle, half busy), one bursty GPU,
# two that never work, and short jobs starting every few seconds on six of them. All schedule
# steps fall on multiples of the poll interval and every level is a whole percent, so the
# driver's 1 s samples carry the patterns exactly and the ground truth is exact too.
SOAK_SCENARIO = """
name: soak-fleet
description: Eight A100s through a day of schedules and short-lived jobs (bench/soak.py).
host: {provider: aws, instance_type: p4d.24xlarge, instance_id: i-0soak, region: us-east-1, zone: us-east-1a,
       tags: {Team: platform}}
nvml: {sample_period: 1s, buffer_samples: 120}
gpus:
  - {index: 0, utilization: {schedule: {repeat: 2h, steps: [{at: 0, value: 0.9}, {at: 30m, value: 0}, {at: 75m, value: 0.35}]}}}
  - {index: 1, utilization: {schedule: {repeat: 6h, steps: [{at: 0, value: 0}, {at: 3h, value: 0.62}]}}}
  - {index: 2, utilization: {burst: {busy: 0.5s, period: 2s}}}
  - {index: 3, utilization: {schedule: {repeat: 45m, steps: [{at: 0, value: 0.05}, {at: 15m, value: 0}, {at: 30m, value: 1}]}}}
  - {index: 4, utilization: 0.0}
  - {index: 5, utilization: 0.0}
  - {index: 6, utilization: {schedule: {repeat: 1h, steps: [{at: 0, value: 0.8}, {at: 40m, value: 0.02}]}}}
  - {index: 7, utilization: 0.42}
processes:
  - {pid: 100000, device: "0", memory: 6GiB, user: alice, command: python train.py, every: 7s, lifetime: 20s}
  - {pid: 300000, device: "1", memory: 2GiB, user: bob, command: jupyter-kernel, every: 5s, lifetime: 4s}
  - {pid: 500000, device: "3", memory: 3GiB, user: carol, command: python eval.py, every: 11s, lifetime: 30s}
  - {pid: 700000, device: "4", memory: 1GiB, user: bob, command: python notebook.py, every: 13s, lifetime: 9s}
  - {pid: 900000, device: "6", memory: 9GiB, user: alice, command: torchrun, every: 3s, lifetime: 6s}
  - {pid: 1100000, device: "6", memory: 1GiB, user: dave, command: nvidia-smi, every: 17s, lifetime: 2s}
  - {pid: 42, device: "7", memory: 20GiB, user: svc, command: tritonserver, started: -86400}
"""

SOAK_CONFIG = """
attribution:
  rules:
    - {match: {user: alice}, team: ml}
    - {match: {user: bob}, team: research, workload: notebooks}
    - {match: {user: carol}, team: ml, workload: eval}
"""

# (from simulated second, $/hour for the whole instance), sorted; each step lands on a poll.
SOAK_PRICES: tuple[tuple[float, float], ...] = ((0.0, 21.96), (5 * HOUR, 32.77), (11 * HOUR, 9.5), (17 * HOUR, 21.96))


def load_soak_scenario(text: str = SOAK_SCENARIO) -> Scenario:
    """Parse a scenario document given as YAML text."""
    return parse_scenario(yaml.safe_load(text), "soak")


def price_at(prices: Sequence[tuple[float, float]], t: float) -> float | None:
    """The instance price in effect at simulated time t (a right-continuous step function)."""
    current: float | None = None
    for start, value in prices:
        if t >= start:
            current = value
    return current


def alive(spec: SimProcess, t: float) -> list[tuple[int, float]]:
    """(pid, birth time) of every instance of `spec` alive at t, by the scenario's own rules."""
    if spec.every <= 0:
        if t >= spec.start and (spec.end is None or t < spec.end):
            return [(spec.pid, spec.start)]
        return []
    out = []
    k = max(0, math.floor((t - spec.start - spec.lifetime) / spec.every))
    while spec.start + k * spec.every <= t:
        born = spec.start + k * spec.every
        if t < born + spec.lifetime and (spec.end is None or born < spec.end):
            out.append((spec.pid + k, born))
        k += 1
    return out


def lost_at(scenario: Scenario, index: int, t: float) -> bool:
    """Whether GPU `index` is inside one of its `lost` fault windows at t."""
    gpu = next(g for g in scenario.gpus if g.index == index)
    return any(f.type == "lost" and t >= f.at and (f.until is None or t < f.until) for f in gpu.faults)


@dataclass
class DeviceTruth:
    """Exact expectations for one GPU, integrated from the scenario."""

    first: float
    busy: float = 0.0
    state_seconds: dict[str, float] = field(default_factory=dict)
    # Money by (team, workload) pair, idle money by (team, workload, state).
    cost: dict[tuple[str, str], float] = field(default_factory=dict)
    idle_cost: dict[tuple[str, str, str], float] = field(default_factory=dict)
    waste: dict[tuple[str, str], float] = field(default_factory=dict)
    fresh: bool = True  # the next interval is a first contact (start, or back from a loss)
    last_charged: dict[tuple[str, str], float] = field(default_factory=dict)  # the pairs the device keeps

    def charged_pair(self, pair: tuple[str, str], t: float, accounting: AccountingSettings) -> tuple[str, str]:
        """The pair an interval ending at t is charged to, under the per-device pair cap and expiry."""
        if pair != OTHER_PAIR:
            if pair in self.last_charged or len(self.last_charged) < accounting.max_pairs_per_device:
                self.last_charged[pair] = t
            else:
                pair = OTHER_PAIR
        for gone in [p for p, last in self.last_charged.items() if t - last > accounting.pair_expiry_seconds]:
            del self.last_charged[gone]
            _move(self.cost, gone, OTHER_PAIR)
            _move(self.waste, gone, OTHER_PAIR)
            for idle_key in [k for k in self.idle_cost if k[:2] == gone]:
                _move(self.idle_cost, idle_key, (*OTHER_PAIR, idle_key[2]))
        return pair


class Truth:
    """Ground truth: what every counter must read, computed from patterns, lifetimes and prices.

    It follows the exporter's documented conventions: an interval is charged whole to the state
    and owner seen at its end, at the price in effect at its start; a device's first poll (and
    the first poll after it was lost) only establishes a baseline for busy time.
    """

    def __init__(self, scenario: Scenario, config: Config) -> None:
        self.scenario = scenario
        self.config = config
        self.price: float | None = None  # $/hour in the context of the last poll
        self.devices: dict[str, DeviceTruth] = {}
        self.last: float | None = None
        self._users = {rule.match: (rule.team, rule.workload) for rule in config.attribution.rules}
        tags = dict(scenario.host.tags)
        self._host_pair = (tags.get("Team") or UNASSIGNED, tags.get("Workload", ""))

    def processes_started(self, t: float) -> int:
        """How many processes the scenario started up to t (counted, not remembered: the harness stays flat too)."""
        count = 0
        for spec in self.scenario.processes:
            if spec.every <= 0:
                count += t >= spec.start
            elif t >= spec.start:
                last = math.floor((min(t, spec.end if spec.end is not None else t) - spec.start) / spec.every)
                count += last + 1
        return count

    def pair_of(self, user: str) -> tuple[str, str]:
        """The (team, workload) a process of `user` is attributed to (the scenario's rules match on user only)."""
        return self._users.get((("user", user),)) or self._host_pair

    def holders(self, index: int, t: float) -> list[tuple[int, SimProcess]]:
        """(pid, spec) of the processes holding GPU `index` at t, sorted by pid."""
        out: list[tuple[int, SimProcess]] = []
        for spec in self.scenario.processes:
            if spec.device == str(index):
                out.extend((pid, spec) for pid, _ in alive(spec, t))
        return sorted(out, key=lambda item: item[0])

    def owner(self, index: int, t: float) -> tuple[str, str]:
        """The device's (team, workload) at t: the process holding most memory's (first by pid on a tie)."""
        best: tuple[int, tuple[str, str]] | None = None
        for _pid, spec in self.holders(index, t):
            if best is None or spec.memory > best[0]:
                best = (spec.memory, self.pair_of(spec.user))
        return best[1] if best else self._host_pair

    def poll(self, t: float, price: float | None, present: set[str] | None = None) -> None:
        """Integrate the interval that ends with a poll at t.

        `price` is the instance price ($/hour) in this poll's context: it prices the next
        interval. `present`: the devices the source enumerated; a device starts counting at the
        first poll that enumerates it (NVML may come up late).
        """
        previous = self.last
        self.last = t
        physical = len(self.scenario.gpus)
        price, self.price = self.price, price
        accounting = self.config.accounting
        for gpu in self.scenario.gpus:
            name = f"nvidia{gpu.index}"
            holders = self.holders(gpu.index, t)
            book = self.devices.get(name)
            if present is not None and name not in present:
                continue
            if book is None:
                self.devices[name] = DeviceTruth(first=t, fresh=False)
                continue
            assert previous is not None
            dt = t - previous
            lost = lost_at(self.scenario, gpu.index, t)
            owner = self._host_pair if lost else self.owner(gpu.index, t)
            if lost:
                state, utilization = IDLE_FREE, 0.0
                book.fresh = True
            elif book.fresh:
                # First contact: only the newest sample is read, as a level, not integrated.
                period = self.scenario.sample_period
                utilization = gpu.utilization.busy(t - period, t) / period
                state = _classify(utilization, bool(holders), accounting.idle_threshold, accounting.noise_floor)
                book.fresh = False
            else:
                busy = gpu.utilization.busy(previous, t)
                book.busy += busy
                utilization = busy / dt
                state = _classify(utilization, bool(holders), accounting.idle_threshold, accounting.noise_floor)
            book.state_seconds[state] = book.state_seconds.get(state, 0.0) + dt
            if price is None:
                continue
            dollars = price / physical / HOUR * dt
            pair = book.charged_pair(owner, t, accounting)
            book.cost[pair] = book.cost.get(pair, 0.0) + dollars
            if state != ACTIVE:
                idle_key = (pair[0], pair[1], state)
                book.idle_cost[idle_key] = book.idle_cost.get(idle_key, 0.0) + dollars
            target = accounting.target_utilization
            book.waste[pair] = book.waste.get(pair, 0.0) + dollars * max(0.0, target - utilization) / target


def _move(book: dict[K, float], key: K, to: K) -> None:
    """Fold `key`'s dollars into `to`."""
    if key in book:
        book[to] = book.get(to, 0.0) + book.pop(key)


def by_team(pairs: dict[tuple[str, str], float]) -> dict[str, float]:
    """Dollars by team, summed over workloads."""
    out: dict[str, float] = {}
    for (team, _workload), dollars in pairs.items():
        out[team] = out.get(team, 0.0) + dollars
    return out


def _classify(utilization: float, held: bool, threshold: float, noise_floor: float) -> str:
    # Nobody holding it: housekeeping load up to the noise floor is no work.
    if utilization > (threshold if held else max(threshold, noise_floor)):
        return ACTIVE
    return IDLE_HELD if held else IDLE_FREE


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_exposition(text: str) -> Samples:
    """Sample name -> [(labels, value)], through prometheus_client's own parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of the samples of `name` whose labels include `match`."""
    return sum(v for labels, v in samples.get(name, []) if all(labels.get(k) == x for k, x in match.items()))


def values(samples: Samples, name: str, key: str, **match: str) -> dict[str, float]:
    """{label `key` value: sum} for the samples of `name` matching `match`."""
    out: dict[str, float] = {}
    for labels, v in samples.get(name, []):
        if all(labels.get(k) == x for k, x in match.items()):
            out[labels.get(key, "")] = out.get(labels.get(key, ""), 0.0) + v
    return out


def count_series(text: str) -> int:
    """Number of sample lines in an exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class AcceleratedFleet:
    """The NVML source, ledger and render cache on a ManualClock; one `step` is one poll interval."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        config: Config | None = None,
        prices: Sequence[tuple[float, float]] = SOAK_PRICES,
        interval: float = 15.0,
    ) -> None:
        self.scenario = scenario
        self.config = config or Config()
        self.prices = prices
        self.interval = interval
        self.clock = ManualClock()
        self.fake = FakeNvml(scenario, self.clock)
        self.source = NvmlSource(self.fake.module, self.clock, SimProcFs(self.fake))
        self.ledger = Ledger(self.config.accounting, self.config.attribution.max_label_values)
        self.cache = RenderCache(process_metrics=False)
        self.attributor = RuleAttributor(self.config.attribution)
        self.identity = merge_identity(None, self.config.host, demo=scenario.host)  # as the daemon's --demo
        self.truth = Truth(scenario, self.config)
        self.polls = 0
        self.last_report: SourceReport | None = None

    @property
    def now(self) -> float:
        """Simulated seconds since the start."""
        return self.clock.monotonic()

    def context(self) -> HostContext:
        """The host context at the current time: its PriceQuote follows the price schedule."""
        price = price_at(self.prices, self.now)
        quote = PriceQuote(price, "config" if price is not None else "none")
        return HostContext(self.identity, quote, self.attributor)

    def step(self) -> SourceReport:
        """Advance one interval and poll, exactly as the daemon's loop does (minus the sleeping)."""
        self.clock.advance(self.interval)
        report = self.source._poll_sync()
        context = self.context()
        self.ledger.ingest(report, context, self.now)
        self.truth.poll(self.now, context.price.dollars_per_hour, {r.identity.device for r in report.devices})
        self.polls += 1
        self.last_report = report
        return report

    def publish(self) -> str:
        """Snapshot and render, as after every poll in the daemon; returns the text exposition."""
        self.cache.publish(self.ledger.snapshot(self.now))
        rendered = self.cache.text()
        assert rendered is not None
        return rendered.body.decode("utf-8")

    def run(self, seconds: float, every: int = 4) -> Iterator[str]:
        """Poll for `seconds`; publish and yield the exposition every `every` polls (a 1 min scrape at 15 s)."""
        steps = round(seconds / self.interval)
        for i in range(1, steps + 1):
            self.step()
            if i % every == 0 or i == steps:
                yield self.publish()


@dataclass
class Check:
    """The outcome of comparing one exposition with the ground truth."""

    problems: list[str] = field(default_factory=list)

    def near(self, what: str, got: float, want: float, tolerance: float = 1e-6) -> None:
        """Record a problem when got and want differ by more than `tolerance` (relative, at least absolute)."""
        if abs(got - want) > tolerance * max(1.0, abs(want)):
            self.problems.append(f"{what}: exported {got!r}, ground truth {want!r}")


def compare(fleet: AcceleratedFleet, samples: Samples, *, states: bool = True, owners: bool = True) -> list[str]:
    """Every counter against the ground truth; returns the differences (empty when all agree).

    `states` and `owners` can be switched off for runs whose faults make the state or the owner
    depend on the exporter's fallback (e.g. no process list during an NVML error).
    """
    check = Check()
    now = fleet.now
    for name, book in fleet.truth.devices.items():
        check.near(f"{name} busy seconds", total(samples, "accel_busy_seconds_total", device=name), book.busy)
        exported_states = values(samples, "accel_state_seconds_total", "state", device=name)
        check.near(f"{name} state seconds sum", sum(exported_states.values()), now - book.first)
        exported_cost = values(samples, "accel_cost_dollars_total", "team", device=name)
        check.near(f"{name} cost", sum(exported_cost.values()), sum(book.cost.values()))
        if states:
            for state in STATES:
                check.near(
                    f"{name} {state} seconds", exported_states.get(state, 0.0), book.state_seconds.get(state, 0.0)
                )
        if owners:
            cost, waste = by_team(book.cost), by_team(book.waste)
            for team in set(exported_cost) | set(cost):
                check.near(f"{name} cost team={team}", exported_cost.get(team, 0.0), cost.get(team, 0.0))
            exported_waste = values(samples, "accel_waste_dollars_total", "team", device=name)
            for team in set(exported_waste) | set(waste):
                check.near(f"{name} waste team={team}", exported_waste.get(team, 0.0), waste.get(team, 0.0))
        if states and owners:
            idle_cost: dict[tuple[str, str], float] = {}
            for (team, _workload, state), dollars in book.idle_cost.items():
                idle_cost[(team, state)] = idle_cost.get((team, state), 0.0) + dollars
            for team, state in set(idle_cost) | {
                (labels["team"], labels["state"])
                for labels, _ in samples.get("accel_idle_cost_dollars_total", [])
                if labels["device"] == name
            }:
                check.near(
                    f"{name} idle cost team={team} state={state}",
                    total(samples, "accel_idle_cost_dollars_total", device=name, team=team, state=state),
                    idle_cost.get((team, state), 0.0),
                )
    # Exited processes vanish: the exported pids are exactly the ones alive now.
    exported = {(labels["device"], labels["pid"]) for labels, _ in samples.get("accel_process_info", [])}
    expected = {
        (f"nvidia{g.index}", str(pid))
        for g in fleet.scenario.gpus
        if not lost_at(fleet.scenario, g.index, now)
        for pid, _ in fleet.truth.holders(g.index, now)
    }
    if exported != expected:
        check.problems.append(f"process series {sorted(exported ^ expected)[:6]} differ from the processes alive")
    return check.problems


class CounterWatch:
    """Watches successive expositions: a counter that went backwards or a series exported twice is a problem."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.problems: list[str] = []

    def observe(self, samples: Samples) -> None:
        """Check this exposition on its own and its counters against the previous one."""
        for name, rows in samples.items():
            keys = [(name, tuple(sorted(labels.items()))) for labels, _ in rows]
            if len(set(keys)) != len(keys):
                self.problems.append(f"{name}: the same label set exported twice")
            if not name.endswith("_total"):
                continue
            for key, (_, value) in zip(keys, rows, strict=True):
                before = self._last.get(key)
                if before is not None and value < before - 1e-9:
                    self.problems.append(f"{name}{dict(key[1])}: {before} -> {value}")
                self._last[key] = value


def rss_bytes() -> int:
    """Resident set size of this process from /proc/self/status (0 where there is no procfs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class SoakResult:
    """Figures from one accelerated run."""

    hours: float
    polls: int
    wall_seconds: float
    processes_started: int
    max_series: int
    min_series: int
    rss: dict[float, int]
    objects: dict[float, int]
    traced: dict[float, int]
    problems: list[str]
    watch_problems: list[str]  # counters that went backwards, series exported twice


def soak(
    hours: float,
    *,
    interval: float = 15.0,
    checkpoints: Sequence[float] = (1.0, 12.0, 24.0),
    check_every: int = 40,
    trace: bool = False,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Run the soak scenario for `hours` simulated hours; memory is sampled at `checkpoints` (hours).

    The exposition is compared with the ground truth every `check_every` renders and at the end.
    With `trace`, tracemalloc counts the Python heap (about twice as slow).
    """
    fleet = AcceleratedFleet(load_soak_scenario(), config=parse_config(yaml.safe_load(SOAK_CONFIG)), interval=interval)
    watch = CounterWatch()
    problems: list[str] = []
    series: list[int] = []
    rss: dict[float, int] = {}
    objects: dict[float, int] = {}
    traced: dict[float, int] = {}
    pending = sorted(h for h in checkpoints if h <= hours)
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    for n, text in enumerate(fleet.run(hours * HOUR), start=1):
        series.append(count_series(text))
        if n % check_every == 0 or fleet.now >= hours * HOUR:
            samples = parse_exposition(text)
            watch.observe(samples)
            problems.extend(f"t={fleet.now:.0f}s {p}" for p in compare(fleet, samples))
        while pending and fleet.now >= pending[0] * HOUR:
            gc.collect()
            rss[pending[0]] = rss_bytes()
            objects[pending[0]] = len(gc.get_objects())
            if trace:
                traced[pending[0]] = tracemalloc.get_traced_memory()[0]
            if progress:
                progress(f"{pending[0]:g} h simulated after {time.perf_counter() - started:.1f} s wall")
            pending.pop(0)
    if trace:
        tracemalloc.stop()
    return SoakResult(
        hours=hours,
        polls=fleet.polls,
        wall_seconds=time.perf_counter() - started,
        processes_started=fleet.truth.processes_started(fleet.now),
        max_series=max(series),
        min_series=min(series),
        rss=rss,
        objects=objects,
        traced=traced,
        problems=problems,
        watch_problems=watch.problems,
    )


@dataclass
class HttpSoakResult:
    """Figures from an accelerated run served by the real aiohttp application."""

    hours: float
    scrapes: int
    wall_seconds: float
    problems: list[str]
    watch_problems: list[str]  # counters that went backwards, series exported twice


async def soak_http(hours: float, *, interval: float = 15.0, scrape_every: int = 4) -> HttpSoakResult:
    """The soak scenario behind exporter.web.server's application on loopback, scraped every `scrape_every` polls."""
    from aiohttp import ClientSession, web

    from exporter.web.server import build_app

    fleet = AcceleratedFleet(load_soak_scenario(), config=parse_config(yaml.safe_load(SOAK_CONFIG)), interval=interval)
    app = build_app(fleet.cache, lambda: fleet.polls > 0)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    watch = CounterWatch()
    problems: list[str] = []
    scrapes = 0
    started = time.perf_counter()
    try:
        async with ClientSession() as session:
            steps = round(hours * HOUR / interval)
            for i in range(1, steps + 1):
                fleet.step()
                fleet.publish()
                if i % scrape_every:
                    continue
                async with session.get(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
                    if r.status != 200:
                        problems.append(f"t={fleet.now:.0f}s: HTTP {r.status}")
                        continue
                    text = await r.text()
                scrapes += 1
                samples = parse_exposition(text)
                watch.observe(samples)
                problems.extend(f"t={fleet.now:.0f}s {p}" for p in compare(fleet, samples))
    finally:
        await runner.cleanup()
    return HttpSoakResult(hours, scrapes, time.perf_counter() - started, problems, watch.problems)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print its figures (JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours without HTTP (default 24)")
    parser.add_argument("--http-hours", type=float, default=1.0, help="simulated hours behind HTTP (default 1)")
    parser.add_argument("--interval", type=float, default=15.0, help="poll interval in simulated seconds")
    parser.add_argument("--tracemalloc", action="store_true", help="also measure the Python heap (slower)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        if not args.json:
            print(message, flush=True)

    result = soak(args.hours, interval=args.interval, trace=args.tracemalloc, progress=say)
    figures: dict[str, Any] = {
        "simulated_hours": result.hours,
        "polls": result.polls,
        "wall_seconds": round(result.wall_seconds, 1),
        "processes_started": result.processes_started,
        "series_min_max": [result.min_series, result.max_series],
        "rss_mib": {f"{h:g}h": round(v / 2**20, 1) for h, v in result.rss.items()},
        "gc_objects": {f"{h:g}h": v for h, v in result.objects.items()},
        "python_heap_kib": {f"{h:g}h": round(v / 1024) for h, v in result.traced.items()},
        "ground_truth_differences": len(result.problems),
        "counter_decreases_or_duplicates": len(result.watch_problems),
    }
    failed = bool(result.problems or result.watch_problems)
    if args.http_hours > 0:
        http = asyncio.run(soak_http(args.http_hours, interval=args.interval))
        figures["http"] = {
            "simulated_hours": http.hours,
            "scrapes": http.scrapes,
            "wall_seconds": round(http.wall_seconds, 1),
            "ground_truth_differences": len(http.problems),
            "counter_decreases_or_duplicates": len(http.watch_problems),
        }
        failed = failed or bool(http.problems or http.watch_problems)
        for p in (http.problems + http.watch_problems)[:10]:
            say(f"http: {p}")
    for p in (result.problems + result.watch_problems)[:10]:
        say(p)
    print(json.dumps(figures, indent=None if args.json else 1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
