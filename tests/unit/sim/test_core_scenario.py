"""Scenario files and utilization patterns: built-ins load, bad files name the key, integrals are exact."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml

from exporter.config import ConfigInvalid
from exporter.sim.patterns import Burst, Constant, Pattern, RandomSteps, Schedule
from exporter.sim.scenario import builtin_scenarios, load_scenario, parse_scenario, parse_size

# --- the loader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", builtin_scenarios())
def test_builtin_scenarios_load(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert scenario.description
    assert scenario.gpus or scenario.neuron is not None
    for gpu in scenario.gpus:
        assert gpu.memory_total > 0
    gpu_indices = {str(g.index) for g in scenario.gpus}
    for proc in scenario.processes:
        assert proc.device.split("/")[0] in gpu_indices, proc


def test_the_three_core_scenarios_exist() -> None:
    assert {"p4d-idle-fleet", "a100-mig", "g6-inference"} <= set(builtin_scenarios())
    fleet = load_scenario("p4d-idle-fleet")
    assert len(fleet.gpus) == 8
    mig = load_scenario("a100-mig")
    assert [m.slices for m in mig.gpus[0].mig] == [3, 2, 1]


def test_scenario_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump({"name": "mine", "gpus": [{"index": 0, "memory_total": "16GiB", "utilization": 0.5}]})
    )
    scenario = load_scenario(str(path))
    assert scenario.name == "mine"
    assert scenario.gpus[0].memory_total == 16 * 2**30
    assert scenario.gpus[0].utilization.level(12.0) == 0.5


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ({"gpus": [{"index": 0, "memory_total": "lots"}]}, "gpus[0].memory_total"),
        ({"gpus": [{"index": 0, "utilization": 1.5}]}, "gpus[0].utilization"),
        (
            {"gpus": [{"index": 0, "utilization": {"burst": {"busy": "3s", "period": "2s"}}}]},
            "gpus[0].utilization.burst.busy",
        ),
        ({"gpus": [{"index": 0, "utilization": {"constant": 0.1, "burst": {}}}]}, "gpus[0].utilization"),
        ({"gpus": [{"index": 0, "faults": [{"type": "meltdown"}]}]}, "gpus[0].faults[0].type"),
        ({"gpus": [{"index": 0, "faults": [{"type": "error", "every": 0}]}]}, "gpus[0].faults[0].every"),
        ({"gpus": [{"index": 0, "colour": "green"}]}, "gpus[0].colour"),
        ({"nvml": {"missing": "maybe"}}, "nvml.missing"),
        ({"nvml": {"sample_period": "1h"}}, "nvml.sample_period"),
        ({"processes": [{"pid": 0}]}, "processes[0].pid"),
        ({"processes": [{"pid": 5, "memory": "-1GiB"}]}, "processes[0].memory"),
        ({"gpus": [{"index": 0, "mig": [{"gi": 1, "slices": 9}]}]}, "gpus[0].mig[0].slices"),
    ],
)
def test_bad_scenario_names_the_key_path(document: object, key: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_scenario(document, "bad.yaml")
    assert any(f"'{key}'" in e for e in info.value.errors), info.value.errors
    assert str(info.value).startswith("bad.yaml: ")


def test_duplicate_gpu_indices_are_refused() -> None:
    with pytest.raises(ConfigInvalid, match="unique"):
        parse_scenario({"gpus": [{"index": 1}, {"index": 1}]})


def test_bad_scenario_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="no such scenario"):
        load_scenario(str(tmp_path / "absent.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpus: [\n")
    with pytest.raises(ConfigInvalid, match="not valid YAML"):
        load_scenario(str(broken))


@pytest.mark.parametrize(
    ("text", "size"),
    [("40GiB", 40 * 2**30), ("512 MiB", 512 * 2**20), ("1.5KB", 1500), (1024, 1024), ("7", 7)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", -5, True, "5 PiB", None])
def test_parse_size_rejects(text: object) -> None:
    assert parse_size(text) is None


# --- patterns: exact integrals against numeric integration ----------------------------------------


def numeric_busy(pattern: Pattern, a: float, b: float, cells: int = 20_000) -> tuple[float, float]:
    """Midpoint rule over `level` (knows nothing about the pattern), and its cell width."""
    h = (b - a) / cells
    return sum(pattern.level(a + (i + 0.5) * h) for i in range(cells)) * h, h


def breakpoints(pattern: Pattern, a: float, b: float) -> list[float]:
    """Where the level may change in [a, b], from the pattern's parameters."""
    points: list[float] = []
    if isinstance(pattern, Burst):
        first = math.floor((a - pattern.offset) / pattern.period) - 1
        last = math.ceil((b - pattern.offset) / pattern.period) + 1
        for k in range(first, last + 1):
            start = pattern.offset + k * pattern.period
            points += [start, start + pattern.on]
    elif isinstance(pattern, Schedule):
        starts = [start for start, _ in pattern.steps]
        if pattern.repeat > 0:
            for cycle in range(math.floor(a / pattern.repeat) - 1, math.ceil(b / pattern.repeat) + 1):
                points += [cycle * pattern.repeat + x for x in [0.0, *starts]]
        else:
            points += starts
    elif isinstance(pattern, RandomSteps):
        points += [k * pattern.step for k in range(math.floor(a / pattern.step), math.ceil(b / pattern.step) + 1)]
    return sorted({a, b, *(p for p in points if a < p < b)})


def piecewise_busy(pattern: Pattern, a: float, b: float) -> float:
    """Exact for a piecewise-constant level: `level` at the middle of each constant piece x its length."""
    cuts = breakpoints(pattern, a, b)
    return sum(pattern.level((lo + hi) / 2) * (hi - lo) for lo, hi in itertools.pairwise(cuts))


# (label, pattern, most level changes per second): the midpoint rule is exact for a piecewise-
# constant level except in the cells where it jumps, each off by at most one cell width.
PATTERNS: list[tuple[str, Pattern, float]] = [
    ("constant", Constant(0.37), 0.0),
    ("burst", Burst(on=0.2, period=2.0), 1.0),
    ("burst-offset-value", Burst(on=1.5, period=4.0, value=0.9, offset=0.7), 0.5),
    ("schedule-once", Schedule(((0.0, 0.6), (30.0, 0.2), (45.0, 0.0))), 0.1),
    ("schedule-repeat", Schedule(((0.0, 0.6), (30.0, 0.2)), repeat=60.0), 0.1),
    ("schedule-late-start-repeat", Schedule(((5.0, 1.0), (7.0, 0.25)), repeat=10.0), 0.3),
    ("random", RandomSteps(mean=0.35, spread=0.3, step=3.0, seed=5), 1 / 3),
    ("random-fine", RandomSteps(mean=0.7, spread=0.2, step=0.25, seed=11), 4.0),
]
RANGES = [(0.0, 10.0), (0.13, 7.77), (55.5, 183.25), (119.9, 120.1), (0.0, 3600.0), (1234.5, 5678.9)]


@pytest.mark.parametrize(("label", "pattern", "rate"), PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize(("a", "b"), RANGES)
def test_busy_integral_is_exact(label: str, pattern: Pattern, rate: float, a: float, b: float) -> None:
    exact = pattern.busy(a, b)
    assert exact == pytest.approx(piecewise_busy(pattern, a, b), rel=1e-9, abs=1e-9), (label, a, b)
    assert 0.0 <= exact <= (b - a) + 1e-9


@pytest.mark.parametrize(("label", "pattern", "rate"), PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize(("a", "b"), [(0.0, 10.0), (0.13, 7.77), (119.9, 120.1), (58.0, 63.0)])
def test_busy_integral_matches_numeric_integration(
    label: str, pattern: Pattern, rate: float, a: float, b: float
) -> None:
    # Independent of the breakpoints above: a plain midpoint rule with its worst-case error bound.
    numeric, h = numeric_busy(pattern, a, b)
    jumps = rate * (b - a) + 2
    assert pattern.busy(a, b) == pytest.approx(numeric, abs=h * jumps + 1e-9), (label, a, b)


@pytest.mark.parametrize(("label", "pattern", "rate"), PATTERNS, ids=[p[0] for p in PATTERNS])
def test_empty_and_reversed_intervals(label: str, pattern: Pattern, rate: float) -> None:
    assert pattern.busy(3.0, 3.0) == 0.0
    assert pattern.busy(5.0, 1.0) == 0.0


@pytest.mark.parametrize(("label", "pattern", "rate"), PATTERNS, ids=[p[0] for p in PATTERNS])
def test_busy_is_additive(label: str, pattern: Pattern, rate: float) -> None:
    cuts = [0.0, 0.1, 1.7, 2.0, 29.99, 30.0, 61.3, 125.0]
    pieces = sum(pattern.busy(x, y) for x, y in itertools.pairwise(cuts))
    assert pieces == pytest.approx(pattern.busy(cuts[0], cuts[-1]), rel=1e-12, abs=1e-12)


def test_burst_known_values() -> None:
    burst = Burst(on=0.2, period=2.0)
    assert burst.busy(0.0, 2.0) == pytest.approx(0.2)
    assert burst.busy(0.0, 1800.0) == pytest.approx(180.0)
    assert burst.busy(0.1, 0.15) == pytest.approx(0.05)
    assert burst.busy(0.5, 1.9) == 0.0
    assert burst.busy(5.0, 1.0) == 0.0  # reversed interval


def test_schedule_repeat_known_values() -> None:
    schedule = Schedule(((0.0, 0.6), (30.0, 0.2)), repeat=60.0)
    assert schedule.busy(0.0, 60.0) == pytest.approx(30 * 0.6 + 30 * 0.2)
    assert schedule.busy(0.0, 600.0) == pytest.approx(10 * 24.0)
    assert schedule.busy(50.0, 70.0) == pytest.approx(10 * 0.2 + 10 * 0.6)
    assert schedule.level(95.0) == 0.2


def test_random_steps_are_seeded_and_bounded() -> None:
    a = RandomSteps(mean=0.5, spread=0.6, step=1.0, seed=3)
    b = RandomSteps(mean=0.5, spread=0.6, step=1.0, seed=3)
    c = RandomSteps(mean=0.5, spread=0.6, step=1.0, seed=4)
    levels = [a.level(t + 0.5) for t in range(200)]
    assert levels == [b.level(t + 0.5) for t in range(200)]
    assert levels != [c.level(t + 0.5) for t in range(200)]
    assert all(0.0 <= x <= 1.0 for x in levels)
    assert min(levels) == 0.0 and max(levels) == 1.0  # clamped at both ends with this spread
