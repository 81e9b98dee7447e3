"""Utilization over time, with exact integrals so tests can compare against ground truth."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol


class Pattern(Protocol):
    """Busy level (0-1) as a function of scenario time."""

    def level(self, t: float) -> float:
        """Instantaneous busy level at time t."""
        ...

    def busy(self, a: float, b: float) -> float:
        """Exact busy seconds in [a, b]."""
        ...


@dataclass(frozen=True)
class Constant:
    """The same level all the time."""

    value: float

    def level(self, t: float) -> float:
        """Instantaneous busy level at time t."""
        return self.value

    def busy(self, a: float, b: float) -> float:
        """Exact busy seconds in [a, b]."""
        return self.value * max(0.0, b - a)


@dataclass(frozen=True)
class Burst:
    """`on` seconds at `value`, then idle, repeating every `period` seconds, shifted by `offset`."""

    on: float
    period: float
    value: float = 1.0
    offset: float = 0.0

    def level(self, t: float) -> float:
        """Instantaneous busy level at time t."""
        return self.value if (t - self.offset) % self.period < self.on else 0.0

    def _cumulative(self, t: float) -> float:
        shifted = t - self.offset
        cycles = math.floor(shifted / self.period)
        into = shifted - cycles * self.period
        return (cycles * self.on + min(into, self.on)) * self.value

    def busy(self, a: float, b: float) -> float:
        """Exact busy seconds in [a, b]."""
        return max(0.0, self._cumulative(b) - self._cumulative(a)) if b > a else 0.0


@dataclass(frozen=True)
class Schedule:
    """Piecewise constant: `steps` are (start time, level), sorted; before the first, level 0.

    With `repeat` > 0 the schedule loops every `repeat` seconds.
    """

    steps: tuple[tuple[float, float], ...]
    repeat: float = 0.0

    def level(self, t: float) -> float:
        """Instantaneous busy level at time t."""
        if self.repeat > 0:
            t = t % self.repeat
        current = 0.0
        for start, value in self.steps:
            if t >= start:
                current = value
        return current

    def _once(self, a: float, b: float) -> float:
        total = 0.0
        bounds = [start for start, _ in self.steps] + [math.inf]
        for i, (start, value) in enumerate(self.steps):
            lo, hi = max(a, start), min(b, bounds[i + 1])
            if hi > lo:
                total += value * (hi - lo)
        return total

    def busy(self, a: float, b: float) -> float:
        """Exact busy seconds in [a, b]."""
        if b <= a:
            return 0.0
        if self.repeat <= 0:
            return self._once(a, b)
        cycle_busy = self._once(0.0, self.repeat)
        first = math.floor(a / self.repeat)
        last = math.floor(b / self.repeat)
        if first == last:
            return self._once(a - first * self.repeat, b - first * self.repeat)
        head = self._once(a - first * self.repeat, self.repeat)
        tail = self._once(0.0, b - last * self.repeat)
        return head + tail + cycle_busy * (last - first - 1)


@dataclass(frozen=True)
class RandomSteps:
    """A new level every `step` seconds, uniform in [mean - spread, mean + spread], seeded."""

    mean: float
    spread: float
    step: float
    seed: int = 0

    def level(self, t: float) -> float:
        """Instantaneous busy level at time t."""
        return self._value(math.floor(t / self.step))

    def _value(self, k: int) -> float:
        rng = random.Random(self.seed * 1_000_003 + k)
        return min(1.0, max(0.0, self.mean + rng.uniform(-self.spread, self.spread)))

    def busy(self, a: float, b: float) -> float:
        """Exact busy seconds in [a, b]."""
        total = 0.0
        t = a
        while t < b:
            k = math.floor(t / self.step)
            if (k + 1) * self.step <= t:
                k += 1  # t sits on a step edge that division rounded down (9.1 / 1.3 < 7): no progress otherwise
            end = min(b, (k + 1) * self.step)
            total += self._value(k) * (end - t)
            t = end
        return total
