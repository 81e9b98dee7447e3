"""The NVML source's arithmetic on plain numbers: read scheduling, sample-buffer integration, energy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources.nvml_integrate import (
    DUE_SHARE,
    ENERGY_READ_SECONDS,
    SAMPLES_READ_SECONDS,
    Activity,
    SampleCursor,
    due,
    energy_due,
    integrate,
    joules,
    point_activity,
    read_whole_buffer,
    sample_points,
    samples_period,
    unchanged,
    watts,
)

PERIOD_US = 166_667  # the driver's utilization sample period on recent GPUs (1/6 s)


def _stream(start_us: int, levels: list[float]) -> list[tuple[int, float]]:
    return [(start_us + i * PERIOD_US, level) for i, level in enumerate(levels)]


def test_a_read_is_due_at_three_quarters_of_its_period() -> None:
    assert due(None, 5.0, 0.0)
    assert due(100.0, 5.0, 100.0 + 5.0 * DUE_SHARE)
    assert not due(100.0, 5.0, 100.0 + 5.0 * DUE_SHARE - 0.01)


def test_energy_is_read_every_energy_period_and_converted_to_base_units() -> None:
    assert energy_due(None, 3.0)
    assert not energy_due(0.0, ENERGY_READ_SECONDS * DUE_SHARE - 0.1)
    assert energy_due(0.0, ENERGY_READ_SECONDS)
    assert joules(123_456) == pytest.approx(123.456)
    assert joules(None) is None
    assert watts(312_500) == pytest.approx(312.5)
    assert watts(None) is None


def test_the_buffer_is_read_whole_until_it_is_known_to_hold_twice_the_read_period() -> None:
    assert read_whole_buffer(SampleCursor())
    assert read_whole_buffer(SampleCursor(buffer_span_seconds=2 * SAMPLES_READ_SECONDS - 0.1))
    assert not read_whole_buffer(SampleCursor(buffer_span_seconds=2 * SAMPLES_READ_SECONDS))


def test_buffer_reads_are_at_most_the_read_period_apart_and_at_most_half_the_buffer() -> None:
    assert samples_period(SampleCursor()) == 0.0
    assert samples_period(SampleCursor(buffer_span_seconds=4.0)) == 2.0
    assert samples_period(SampleCursor(buffer_span_seconds=100.0)) == SAMPLES_READ_SECONDS


def test_sample_points_read_the_value_field_of_the_value_type_and_sort_by_time() -> None:
    def sample(ts: int, **value: float) -> SimpleNamespace:
        return SimpleNamespace(timeStamp=ts, sampleValue=SimpleNamespace(**value))

    assert sample_points(1, [sample(20, uiVal=7), sample(10, uiVal=3)]) == [(10, 3.0), (20, 7.0)]
    assert sample_points(0, [sample(5, dVal=42.5)]) == [(5, 42.5)]
    assert sample_points(99, [sample(5, uiVal=9)]) == [(5, 9.0)]  # unknown type: the driver's usual uiVal


def test_the_first_read_starts_at_the_newest_sample_and_counts_nothing() -> None:
    points = _stream(1_000_000, [100.0, 100.0, 30.0])
    result = integrate(SampleCursor(), points, None, whole=True)
    assert result.activity == Activity(0.0, 0.0, 0.3)
    assert result.cursor.last_seen_us == points[-1][0]
    assert result.cursor.buffer_span_seconds == pytest.approx(2 * PERIOD_US / 1e6)
    assert result.cursor.period_us is None  # learnt from the samples actually counted
    assert result.samples_lost == 0


def test_each_sample_counts_for_the_gap_before_it_and_counted_samples_are_skipped() -> None:
    start = SampleCursor(last_seen_us=1_000_000, last_utilization=0.0)
    points = [(1_000_000 - PERIOD_US, 100.0), (1_000_000, 100.0), *_stream(1_000_000 + PERIOD_US, [50.0, 100.0, 0.0])]
    result = integrate(start, points, 0.5, whole=False)
    gap = PERIOD_US / 1e6
    assert result.activity.busy_seconds == pytest.approx(1.5 * gap)
    assert result.activity.covered_seconds == pytest.approx(3 * gap)
    assert result.activity.utilization == pytest.approx(0.5)
    assert result.cursor == SampleCursor(points[-1][0], PERIOD_US, pytest.approx(0.5), None)


def test_levels_outside_0_to_100_percent_are_clamped() -> None:
    start = SampleCursor(last_seen_us=0)
    result = integrate(start, _stream(PERIOD_US, [250.0, -20.0]), 1.0, whole=False)
    assert result.activity.busy_seconds == pytest.approx(PERIOD_US / 1e6)


def test_after_a_poll_without_samples_the_read_reaches_back_to_that_poll() -> None:
    points = _stream(10_000_000, [100.0] * 13)  # two seconds of samples, all busy
    result = integrate(SampleCursor(last_utilization=0.2), points, 1.0, whole=False)
    assert result.activity.covered_seconds == pytest.approx(1.0, abs=PERIOD_US / 1e6)
    assert result.activity.busy_seconds == pytest.approx(result.activity.covered_seconds)


def test_an_overflowed_buffer_is_counted_as_lost_samples_and_shortens_the_read_period() -> None:
    start = SampleCursor(last_seen_us=0, period_us=PERIOD_US, buffer_span_seconds=20.0)
    points = _stream(10_000_000, [100.0, 100.0, 100.0])  # 10 s after the last sample counted
    result = integrate(start, points, 10.0, whole=False)
    assert result.samples_lost == 1
    assert result.activity.covered_seconds == pytest.approx(10.0 + 2 * PERIOD_US / 1e6)
    assert result.cursor.buffer_span_seconds == pytest.approx(2 * PERIOD_US / 1e6)
    assert samples_period(result.cursor) < SAMPLES_READ_SECONDS


def test_an_empty_answer_changes_nothing() -> None:
    cursor = SampleCursor(last_seen_us=5, period_us=PERIOD_US, last_utilization=0.4, buffer_span_seconds=1.0)
    result = integrate(cursor, [], 5.0, whole=True)
    assert result.cursor is cursor
    assert result.activity == unchanged(cursor) == Activity(0.0, 0.0, 0.4)


@settings(max_examples=200, deadline=None)
@given(
    levels=st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=60),
    cuts=st.lists(st.integers(min_value=1, max_value=59), max_size=5),
)
def test_busy_time_is_the_same_however_the_reads_split_the_samples(levels: list[float], cuts: list[int]) -> None:
    """Exact for any poll interval: reading the buffer in pieces adds up to reading it once."""
    points = _stream(PERIOD_US, levels)
    origin = SampleCursor(last_seen_us=0)
    once = integrate(origin, points, 1.0, whole=False)
    cursor, busy, covered = origin, 0.0, 0.0
    for end in [*sorted({c for c in cuts if c < len(points)}), len(points)]:
        piece = integrate(cursor, points[:end], 1.0, whole=False)  # the buffer still holds older samples
        cursor = piece.cursor
        busy += piece.activity.busy_seconds or 0.0
        covered += piece.activity.covered_seconds
    assert busy == pytest.approx(once.activity.busy_seconds)
    assert covered == pytest.approx(once.activity.covered_seconds)
    assert cursor.last_seen_us == once.cursor.last_seen_us


def test_without_a_buffer_one_reading_covers_the_time_since_the_last_poll() -> None:
    assert point_activity(50, 10.0, 14.0) == Activity(2.0, 4.0, 0.5)
    assert point_activity(50, None, 14.0) == Activity(0.0, 0.0, 0.5)  # the first poll covers nothing
    assert point_activity(150, 0.0, 1.0).utilization == 1.0
