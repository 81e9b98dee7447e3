"""The NVML source's arithmetic, as pure functions: when its two costly reads are due, how the
driver's utilization sample buffer adds up to busy time, and what the energy counter reads in joules.

No NVML call happens here: the source reads the driver and hands over plain values, so every
rule can be tested with numbers alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

# The energy counter and the utilization sample buffer each cost about 1-3 ms of CPU per call on
# a GSP-based driver (measured on an H200, driver 580: bench/nvml_cost.py), against microseconds
# for the rest. Neither loses anything by being read less often than every poll: the counter
# keeps counting, and the buffer keeps its samples until the next read.
ENERGY_READ_SECONDS = 10.0
SAMPLES_READ_SECONDS = 5.0
# A read is due once this share of its period has passed, so that polls at exactly the period
# (5 s, the default interval) never skip one to clock jitter.
DUE_SHARE = 0.75
# nvmlValueType_t -> the field of nvmlValue_t that holds the sample.
_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


@dataclass(frozen=True)
class SampleCursor:
    """Where one device's sample buffer was left at the last read.

    `last_seen_us`: the driver timestamp of the newest sample counted (None: start afresh);
    `period_us`: the shortest gap seen between samples (the driver's sample period);
    `last_utilization`: the gauge shown between reads; `buffer_span_seconds`: how far back the
    buffer was seen to reach, on whole-buffer reads and overflows.
    """

    last_seen_us: int | None = None
    period_us: int | None = None
    last_utilization: float | None = None
    buffer_span_seconds: float | None = None


@dataclass(frozen=True)
class Activity:
    """Busy and covered seconds over an interval, and the utilization to show."""

    busy_seconds: float | None
    covered_seconds: float
    utilization: float | None


@dataclass(frozen=True)
class Integrated:
    """The result of one buffer read: the new cursor, the activity, and how many overflow gaps it had."""

    cursor: SampleCursor
    activity: Activity
    samples_lost: int = 0


def due(last_read: float | None, period: float, now: float) -> bool:
    """Whether a read done every `period` seconds, last at `last_read`, is due at `now`."""
    return last_read is None or now - last_read >= period * DUE_SHARE


def samples_period(cursor: SampleCursor) -> float:
    """Seconds between buffer reads: at most SAMPLES_READ_SECONDS, and half what the buffer holds."""
    if cursor.buffer_span_seconds is None:
        return 0.0
    return min(SAMPLES_READ_SECONDS, cursor.buffer_span_seconds / 2)


def read_whole_buffer(cursor: SampleCursor) -> bool:
    """Whether to read the buffer whole (from timestamp 0) rather than since the last sample.

    Until the buffer is known to hold twice the read period, read it whole (the same cost): how
    far back it reaches sets how long reads may be apart. Samples already counted are skipped by
    their timestamps.
    """
    return cursor.buffer_span_seconds is None or cursor.buffer_span_seconds < 2 * SAMPLES_READ_SECONDS


def unchanged(cursor: SampleCursor) -> Activity:
    """Nothing counted this time (between reads, nothing new, a failed read): the samples wait in the buffer."""
    return Activity(0.0, 0.0, cursor.last_utilization)


def sample_points(value_type: int, samples: Iterable[Any]) -> list[tuple[int, float]]:
    """(timestamp in µs, percent) pairs from nvmlDeviceGetSamples' answer, oldest first."""
    attr = _VALUE_FIELDS.get(int(value_type), "uiVal")
    return sorted((int(s.timeStamp), float(getattr(s.sampleValue, attr))) for s in samples)


def integrate(
    cursor: SampleCursor, points: Sequence[tuple[int, float]], since_last_poll: float | None, whole: bool
) -> Integrated:
    """Busy and covered seconds in the samples newer than the cursor, each weighted by the gap before it.

    `points` come from `sample_points`; `since_last_poll` is None on the very first poll;
    `whole` says the buffer was read from timestamp 0 (its span then measures the buffer).
    """
    if not points:  # an empty answer instead of NVML_ERROR_NOT_FOUND: nothing new either
        return Integrated(cursor, unchanged(cursor))
    span = (points[-1][0] - points[0][0]) / 1e6
    buffer_span = cursor.buffer_span_seconds
    if whole:
        buffer_span = max(buffer_span or 0.0, span)
    last_seen = cursor.last_seen_us
    if last_seen is None:
        if since_last_poll is None:
            # The very first poll: nothing to account yet; start from the newest sample, which
            # the gauge shows until the next read (history from before we started is not ours
            # to average: on a real H200 it held the blips of the driver's own start).
            level = min(1.0, max(0.0, points[-1][1] / 100.0))
            first = replace(cursor, last_seen_us=points[-1][0], last_utilization=level, buffer_span_seconds=buffer_span)
            return Integrated(first, Activity(0.0, 0.0, level))
        # First samples after a poll that had none (driver just started, GPU back from a loss):
        # take the buffer back to the previous poll, measured on the driver's own clock.
        last_seen = points[-1][0] - int(since_last_poll * 1_000_000)
    period_us = cursor.period_us
    gaps = [b[0] - a[0] for a, b in pairwise(points) if b[0] > a[0]]
    if gaps:
        period_us = min(gaps) if period_us is None else min(period_us, *gaps)
    busy = covered = 0.0
    lost = 0
    previous = last_seen
    for ts, value in points:
        if ts <= previous:
            continue
        gap = (ts - previous) / 1e6
        level = min(1.0, max(0.0, value / 100.0))
        if period_us is not None and ts - previous > 2 * period_us:
            # The ring buffer overflowed: samples between `previous` and this one are gone.
            # Count the gap at this sample's level and say so in the self-metrics. What came
            # back is all the buffer holds: read it at least twice as often from now on.
            lost += 1
            buffer_span = span
        busy += gap * level
        covered += gap
        previous = ts
    utilization = busy / covered if covered > 0 else cursor.last_utilization
    after = SampleCursor(previous, period_us, utilization, buffer_span)
    return Integrated(after, Activity(busy, covered, utilization), lost)


def point_activity(percent: int, last_poll: float | None, now: float) -> Activity:
    """Without a sample buffer: one utilization reading stretched over the time since the last poll."""
    level = min(1.0, percent / 100.0)
    dt = now - last_poll if last_poll is not None else 0.0
    return Activity(level * dt, dt, level)


def energy_due(last_read: float | None, now: float) -> bool:
    """Whether the energy counter (read every ENERGY_READ_SECONDS) is due at `now`."""
    return due(last_read, ENERGY_READ_SECONDS, now)


def joules(millijoules: int | None) -> float | None:
    """nvmlDeviceGetTotalEnergyConsumption's millijoules in joules; None stays None (not supported)."""
    return millijoules / 1000.0 if millijoules is not None else None


def watts(milliwatts: int | None) -> float | None:
    """nvmlDeviceGetPowerUsage's milliwatts in watts; None stays None (not supported)."""
    return milliwatts / 1000.0 if milliwatts is not None else None
