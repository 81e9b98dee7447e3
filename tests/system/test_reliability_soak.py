"""Soak and churn in accelerated time: the real NVML source, ledger and exposition on a ManualClock.

Nothing here sleeps: `bench/soak.py` (loaded as a module) advances the clock one poll at a
time, so a simulated day takes seconds. Every exposition is checked against a ground truth
integrated from the scenario itself: busy seconds against the pattern integrals, state seconds
against elapsed time, dollars against price x seconds, process series against the processes
alive. The full figures (24 h, RSS at 1/12/24 h) are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import pytest
import yaml
from conftest import bench_module

from exporter.config import parse_config

soak: Any = bench_module("soak")
HOUR = 3600.0

# Four GPUs; jobs start every 2-5 s and live a few seconds, one job family stops being started
# after 3 h (its series must disappear for good), GPU 3 alternates idle and busy every 20 min.
CHURN_SCENARIO = """
name: churn
description: Short jobs every few seconds on four GPUs whose load follows schedules.
host: {provider: aws, instance_type: g6.12xlarge, region: us-east-1, tags: {Team: search}}
nvml: {sample_period: 1s, buffer_samples: 60}
gpus:
  - {index: 0, model: NVIDIA L4, utilization: {schedule: {repeat: 1h, steps: [{at: 0, value: 0.75}, {at: 20m, value: 0}]}}}
  - {index: 1, model: NVIDIA L4, utilization: {burst: {busy: 1s, period: 4s, value: 0.5}}}
  - {index: 2, model: NVIDIA L4, utilization: 0}
  - {index: 3, model: NVIDIA L4, utilization: {schedule: {repeat: 40m, steps: [{at: 0, value: 0}, {at: 20m, value: 0.33}]}}}
processes:
  - {pid: 20000, device: "0", memory: 3GiB, user: erin, command: python serve.py, every: 2s, lifetime: 5s}
  - {pid: 60000, device: "1", memory: 1GiB, user: frank, command: python batch.py, every: 3s, lifetime: 3s, end: 3h}
  - {pid: 90000, device: "2", memory: 512MiB, user: erin, command: python probe.py, every: 7s, lifetime: 1s}
  - {pid: 120000, device: "3", memory: 2GiB, user: grace, command: python eval.py, every: 4s, lifetime: 10s}
"""
CHURN_CONFIG = """
attribution:
  rules:
    - {match: {user: erin}, team: search, workload: serving}
    - {match: {user: frank}, team: ads}
"""
CHURN_PRICES = ((0.0, 4.6), (HOUR, 5.2), (2.5 * HOUR, 1.9), (4 * HOUR, 4.6))


def integral(prices: tuple[tuple[float, float], ...], a: float, b: float) -> float:
    """Dollars for one instance over [a, b] under a step price schedule ($/hour)."""
    dollars = 0.0
    bounds = [start for start, _ in prices[1:]] + [float("inf")]
    for (start, value), end in zip(prices, bounds, strict=True):
        lo, hi = max(a, start), min(b, end)
        if hi > lo:
            dollars += value * (hi - lo) / HOUR
    return dollars


def test_a_simulated_day_matches_the_ground_truth() -> None:
    # How fast a simulated day runs is a benchmark figure (bench/soak.py), not asserted here.
    result = soak.soak(24.0, checkpoints=(1.0, 24.0), check_every=360)
    assert result.polls == 24 * 240
    assert result.problems == []
    assert result.watch_problems == []
    # Tens of thousands of processes came and went, yet the series count stayed within a band.
    assert result.processes_started > 30_000
    assert result.max_series - result.min_series <= 15, (result.min_series, result.max_series)
    # Nothing accumulates per poll or per process: the live object count is flat after warm-up.
    assert result.objects[24.0] <= result.objects[1.0] * 1.01, result.objects


def test_churn_six_hours_with_price_changes() -> None:
    scenario = soak.parse_scenario(yaml.safe_load(CHURN_SCENARIO), "churn")
    config = parse_config(yaml.safe_load(CHURN_CONFIG))
    fleet = soak.AcceleratedFleet(scenario, config=config, prices=CHURN_PRICES)
    watch = soak.CounterWatch()
    blocks: dict[float, int] = {}
    series: list[int] = []
    for n, text in enumerate(fleet.run(6 * HOUR)):
        series.append(soak.count_series(text))
        if n % 3 == 0:
            samples = soak.parse_exposition(text)
            assert soak.compare(fleet, samples) == [], f"t={fleet.now}"
            watch.observe(samples)
        if fleet.now in (HOUR, 6 * HOUR):
            gc.collect()
            blocks[fleet.now] = sys.getallocatedblocks()
    assert watch.problems == []
    assert fleet.truth.processes_started(fleet.now) > 15_000
    # Bounded: the series count moves only with the handful of jobs that overlap at a time.
    assert max(series) - min(series) <= 3 * 6, (min(series), max(series))
    samples = soak.parse_exposition(fleet.publish())
    # Jobs of the family that stopped at 3 h left no series behind.
    assert not [labels for labels, _ in samples["accel_process_info"] if labels["device"] == "nvidia1"]
    # Independently of the Truth model: all dollars = the price schedule's integral since the first poll.
    first = fleet.interval
    assert soak.total(samples, "accel_cost_dollars_total") == pytest.approx(
        integral(CHURN_PRICES, first, fleet.now), rel=1e-9
    )
    for gpu in scenario.gpus:
        name = f"nvidia{gpu.index}"
        states = soak.values(samples, "accel_state_seconds_total", "state", device=name)
        assert sum(states.values()) == pytest.approx(fleet.now - first)
        assert soak.total(samples, "accel_busy_seconds_total", device=name) == pytest.approx(
            gpu.utilization.busy(first, fleet.now), rel=1e-9
        )
    # Both idle states and the active state occurred, so the state checks above were not vacuous.
    assert {labels["state"] for labels, v in samples["accel_idle_cost_dollars_total"] if v > 0} == {
        "idle_free",
        "idle_held",
    }
    # ads' jobs ended at 3 h: an hour later (accounting.pair_expiry) its dollars moved into `other`.
    teams = {labels["team"] for labels, _ in samples["accel_cost_dollars_total"]}
    assert teams >= {"search", "other"} and "ads" not in teams, teams
    # Allocated blocks after 6 h are those after 1 h: fewer than one leaked block per poll (1200 polls).
    assert blocks[6 * HOUR] - blocks[HOUR] < 500, blocks


def test_an_hour_served_by_the_real_http_application() -> None:
    result = asyncio.run(soak.soak_http(1.0))
    assert result.scrapes == 60
    assert result.problems == []
    assert result.watch_problems == []
