"""The grid-intensity schedule (`carbon.schedule_file`): the file format, every way a file can be
wrong, and exact grams across period boundaries on an injected clock."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from exporter.accounting.ledger import Ledger
from exporter.accounting.snapshot import Snapshot
from exporter.clock import ManualClock
from exporter.config.carbon_schedule import MAX_SCHEDULE_BYTES, MAX_SCHEDULE_ROWS, ScheduleInvalid, read_schedule
from exporter.config.load import parse_config
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.config.reader import ConfigInvalid
from exporter.context.errors import ErrorCounts
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.price.price_cache import PriceCache
from exporter.context.price.pricing import PriceResolver
from exporter.exposition.render import Renderer
from exporter.readings import DeviceIdentity, DeviceReading, SourceReport

MIDNIGHT = datetime(2026, 12, 5, tzinfo=timezone.utc).timestamp()
JOULES_PER_KWH = 3.6e6
HEADER = "start_utc,end_utc,grams_per_kwh\n"
# Two hours at different intensities, a gap, then a half-hour period.
SCHEDULE = (
    HEADER
    + "# from the grid operator's day-ahead forecast\n"
    + "2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,300\n"
    + "2026-12-05T01:00:00+00:00,2026-12-05T02:00:00+00:00,500\n"
    + "\n"
    + "2026-12-05T03:00:00,2026-12-05T03:30:00,100.5\n"
)


def write(tmp_path: Path, text: str, name: str = "grid.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def config_error(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    assert len(info.value.errors) == 1, info.value.errors
    return info.value.errors[0]


def quote_for(doc: dict[str, Any], identity: HostIdentity) -> PriceQuote:
    config = parse_config(doc)
    resolver = PriceResolver(
        config.pricing, ManualClock(), ErrorCounts(), PriceCache(None), live=False, carbon=config.carbon
    )
    return resolver.resolve_offline(identity)


# --- the file -----------------------------------------------------------------------------------


def test_a_schedule_is_read_with_its_periods_in_utc(tmp_path: Path) -> None:
    schedule = read_schedule(write(tmp_path, "\ufeff" + SCHEDULE))  # a spreadsheet's byte-order mark is fine
    assert schedule.starts == (MIDNIGHT, MIDNIGHT + 3600, MIDNIGHT + 3 * 3600)
    assert schedule.ends == (MIDNIGHT + 3600, MIDNIGHT + 7200, MIDNIGHT + 3.5 * 3600)
    assert schedule.grams_per_kwh == (300, 500, 100.5)
    assert schedule.at(MIDNIGHT - 1) is None
    assert schedule.at(MIDNIGHT + 3599.5) == 300
    assert schedule.at(MIDNIGHT + 3600) == 500  # a period starts at its start and ends before its end
    assert schedule.at(MIDNIGHT + 7200) is None  # the gap
    assert schedule.at(MIDNIGHT + 3 * 3600 + 60) == 100.5


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "the file is empty; the file must be CSV with the header start_utc,end_utc,grams_per_kwh"),
        (HEADER, "no rows after the header"),
        ("time,grams\n", "line 1: the header is 'time,grams'"),
        (HEADER + "2026-12-05T00:00:00Z,400\n", "line 2: 2 columns, expected 3"),
        (HEADER + "yesterday,2026-12-05T01:00:00Z,400\n", "line 2: start_utc 'yesterday' is not an ISO-8601 time"),
        (HEADER + "2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,-1\n", "line 2: grams_per_kwh '-1' is not a number"),
        (HEADER + "2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,0.4e6\n", "convert kg or t to grams"),
        (HEADER + "2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,nan\n", "grams_per_kwh 'nan' is not a number"),
        (
            HEADER + "2026-12-05T01:00:00Z,2026-12-05T01:00:00Z,400\n",
            "line 2: end_utc 2026-12-05T01:00:00Z is not after",
        ),
        (
            HEADER + "2026-12-05T01:00:00Z,2026-12-05T02:00:00Z,400\n2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,300\n",
            "line 3: starts before the row above it; sort the rows by start_utc",
        ),
        (
            HEADER + "2026-12-05T00:00:00Z,2026-12-05T02:00:00Z,400\n2026-12-05T01:00:00Z,2026-12-05T03:00:00Z,300\n",
            "line 3: overlaps the row above it (which ends 2026-12-05T02:00:00Z)",
        ),
        (HEADER + '"2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,400\n', "line 2: not CSV"),
    ],
)
def test_a_bad_file_is_a_config_error_naming_file_line_and_fix(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    error = config_error({"carbon": {"schedule_file": path}})
    assert error.startswith(f"config key 'carbon.schedule_file': {path}"), error
    assert expected in error, error


def test_a_missing_unreadable_or_special_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.csv")
    assert f"{missing}: file not found; create it or remove carbon.schedule_file" in config_error(
        {"carbon": {"schedule_file": missing}}
    )
    assert "a directory, not a regular file" in config_error({"carbon": {"schedule_file": str(tmp_path)}})
    assert "must be an absolute path" in config_error({"carbon": {"schedule_file": "grid.csv"}})
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe")
    assert "not UTF-8 text (bad byte at offset 0)" in config_error(
        {"carbon": {"schedule_file": str(tmp_path / "binary.csv")}}
    )


def test_size_and_row_count_are_bounded(tmp_path: Path) -> None:
    huge = tmp_path / "huge.csv"
    huge.write_bytes(HEADER.encode() + b"#" * MAX_SCHEDULE_BYTES)
    assert "over 8 MiB; keep only the periods you need" in config_error({"carbon": {"schedule_file": str(huge)}})
    with pytest.raises(ScheduleInvalid, match=f"line {MAX_SCHEDULE_ROWS + 2}: more than {MAX_SCHEDULE_ROWS} rows"):
        read_schedule(write(tmp_path, _rows_text(MAX_SCHEDULE_ROWS + 1), "many.csv"))


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, tz=timezone.utc).isoformat()


def _rows_text(count: int) -> str:
    """`count` back-to-back one-minute periods from MIDNIGHT."""
    return HEADER + "".join(f"{_iso(MIDNIGHT + 60 * i)},{_iso(MIDNIGHT + 60 * (i + 1))},1\n" for i in range(count))


# --- the arithmetic ---------------------------------------------------------------------------------


class Host:
    """One GPU's simulated energy counter straight into the ledger, on a ManualClock starting at MIDNIGHT."""

    def __init__(self, quote: PriceQuote, start: float) -> None:
        self.clock = ManualClock(epoch=MIDNIGHT, start=start)
        self.ledger = Ledger(AccountingSettings())
        self.context = HostContext(ONPREM, quote, RuleAttributor(AttributionSettings(default_team="lab")))
        self.energy = 1_000_000.0  # joules on the device's counter

    def poll(self, seconds: float, joules: float, read_energy: bool = True) -> Snapshot:
        """Advance the clock, add `joules` to the counter; the source reads it only when `read_energy`."""
        self.clock.advance(seconds)
        self.energy += joules
        device = DeviceIdentity("nvidia0", "GPU-0", "nvidia", "NVIDIA A100-SXM4-80GB", "gpu")
        energy = self.energy if read_energy else None
        reading = DeviceReading(device, up=True, utilization=0.5, energy_joules=energy, power_watts=300.0)
        report = SourceReport("nvml", (reading,), True, 0.0, self.clock.time())
        self.ledger.ingest(report, self.context, self.clock.monotonic(), self.clock.time())
        return self.ledger.snapshot(self.clock.monotonic())


ONPREM = HostIdentity(provider="unknown", source="none")


def grams(snapshot: Snapshot) -> float:
    return sum(value for _, value in snapshot.devices[0].carbon)


def test_grams_follow_the_schedule_across_boundaries_exactly(tmp_path: Path) -> None:
    doc = {"carbon": {"schedule_file": write(tmp_path, SCHEDULE), "grid_intensity": 250, "pue": 1.25}}
    host = Host(quote_for(doc, ONPREM), start=3600 - 40)  # 40 s before the 300 -> 500 boundary
    first = host.poll(0, 0)
    assert grams(first) == 0 and first.grid_intensity == (300, "schedule")

    # 60 s, 90 kJ drawn evenly: 40 s at 300 g/kWh, 20 s at 500, x PUE 1.25.
    after = host.poll(60, 90_000)
    kwh = 90_000 / JOULES_PER_KWH
    expected = (kwh * 40 / 60 * 300 + kwh * 20 / 60 * 500) * 1.25
    assert grams(after) == pytest.approx(expected, abs=1e-9)
    assert after.grid_intensity == (500, "schedule")

    # Into the gap: 3580 s at 500, then 20 s outside the schedule at the fixed 250.
    after_gap = host.poll(3600, 360_000)
    kwh = 360_000 / JOULES_PER_KWH
    expected += (kwh * 3580 / 3600 * 500 + kwh * 20 / 3600 * 250) * 1.25
    assert grams(after_gap) == pytest.approx(expected, abs=1e-9)
    assert after_gap.grid_intensity == (250, "config")  # the landing page and dashboards see the fallback

    # Across the whole gap and the half-hour period, into the time after the schedule ends.
    last = host.poll(7200, 720_000)  # from 02:00:20 to 04:00:20
    kwh = 720_000 / JOULES_PER_KWH
    expected += (kwh * 1800 / 7200 * 100.5 + kwh * 5400 / 7200 * 250) * 1.25
    assert grams(last) == pytest.approx(expected, abs=1e-9)


def test_an_energy_read_every_few_polls_spreads_over_the_time_since_the_last_read(tmp_path: Path) -> None:
    """The NVML source reads the energy counter every 10 s, polls more often: the increment is the
    energy of the whole time since the previous read, not of the last poll interval."""
    doc = {"carbon": {"schedule_file": write(tmp_path, SCHEDULE)}}
    host = Host(quote_for(doc, ONPREM), start=3600 - 8)
    host.poll(0, 0)
    host.poll(5, 1500, read_energy=False)  # 5 s at 300 W, not read yet
    assert grams(host.ledger.snapshot(host.clock.monotonic())) == 0
    snapshot = host.poll(5, 1500)  # read: 3000 J over 10 s, 8 s at 300 g/kWh and 2 s at 500
    kwh = 3000 / JOULES_PER_KWH
    assert grams(snapshot) == pytest.approx(kwh * 0.8 * 300 + kwh * 0.2 * 500, abs=1e-12)


def test_without_a_fixed_intensity_only_scheduled_time_counts(tmp_path: Path) -> None:
    doc = {"carbon": {"schedule_file": write(tmp_path, SCHEDULE)}}
    quote = quote_for(doc, ONPREM)
    assert quote.carbon is not None and quote.carbon_grams_per_kwh is None
    host = Host(quote, start=7200 - 30)
    host.poll(0, 0)
    snapshot = host.poll(60, 60_000)  # 30 s at 500, 30 s in the gap with nothing to fall back on
    assert grams(snapshot) == pytest.approx(60_000 / JOULES_PER_KWH * 0.5 * 500, abs=1e-9)
    assert snapshot.grid_intensity is None  # nothing is in force now: no gauge


def test_the_region_table_is_the_fallback_on_a_cloud_host(tmp_path: Path) -> None:
    aws = HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="eu-north-1", source="aws-imds")
    quote = quote_for({"carbon": {"schedule_file": write(tmp_path, SCHEDULE)}}, aws)
    assert quote.carbon is not None
    assert quote.carbon.in_force(MIDNIGHT + 10) == (300, "schedule")
    assert quote.carbon.in_force(MIDNIGHT + 7300) == (pytest.approx(8.8), "builtin")
    assert quote.carbon.in_force(None) == (pytest.approx(8.8), "builtin")  # no wall time: the fixed value


def test_the_intensity_gauge_is_rendered_with_its_source(tmp_path: Path) -> None:
    doc = {"carbon": {"schedule_file": write(tmp_path, SCHEDULE), "grid_intensity": 250}}
    host = Host(quote_for(doc, ONPREM), start=60)
    host.poll(0, 0)
    text = Renderer(process_metrics=False).plain(host.poll(10, 1000), False).body.decode()
    assert 'accel_carbon_grid_intensity_grams_per_kwh{source="schedule"} 300.0' in text
    assert "# TYPE accel_carbon_grid_intensity_grams_per_kwh gauge" in text
