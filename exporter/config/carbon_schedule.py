"""The grid-intensity schedule file (`carbon.schedule_file`): g CO2e per kWh by time, in UTC.

A CSV file with the header `start_utc,end_utc,grams_per_kwh` and one row per period, e.g.

    start_utc,end_utc,grams_per_kwh
    2026-12-05T00:00:00Z,2026-12-05T01:00:00Z,412.5
    2026-12-05T01:00:00Z,2026-12-05T02:00:00Z,398

Dated periods in UTC rather than a 24-hour profile: grid data (the grid operator, Electricity
Maps or WattTime exports, a day-ahead forecast) comes as dated hourly or half-hourly values that
change from day to day, and UTC has no daylight-saving hour that happens twice. Explicit ends let
a period be any length and make a gap visible: where no row covers a time, the fixed intensity
(`carbon.grid_intensity`, `carbon.regions`, the built-in table) is used. Rows must be in time
order and must not overlap. Lines starting with `#` and blank lines are ignored.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone

from exporter.config.files import NotRegularFile, read_regular_file
from exporter.config.model import CarbonSchedule

HEADER = ("start_utc", "end_utc", "grams_per_kwh")
MAX_SCHEDULE_BYTES = 8 * 1024 * 1024  # a year of 15-minute rows is about 2.5 MiB
MAX_SCHEDULE_ROWS = 100_000  # nearly three years of 15-minute periods
# The dirtiest grids (lignite) emit about 1,100 g CO2e per kWh; 2,000 leaves room and catches unit slips (kg, t).
MAX_GRAMS_PER_KWH = 2000.0
_FIX = f"the file must be CSV with the header {','.join(HEADER)} (see docs/pricing.md)"


class ScheduleInvalid(Exception):
    """The schedule file cannot be used; the message names the file, the line and the fix."""


def read_schedule(path: str) -> CarbonSchedule:
    """Read and check the schedule at `path`; raises ScheduleInvalid with one clear message."""
    try:
        raw = read_regular_file(path, MAX_SCHEDULE_BYTES)
    except FileNotFoundError:
        raise ScheduleInvalid(f"{path}: file not found; create it or remove carbon.schedule_file") from None
    except NotRegularFile as exc:
        raise ScheduleInvalid(f"{path}: {exc}; point carbon.schedule_file at a regular file") from None
    except OSError as exc:
        raise ScheduleInvalid(f"{path}: cannot read the file ({exc.strerror}); check its permissions") from None
    if len(raw) > MAX_SCHEDULE_BYTES:
        raise ScheduleInvalid(
            f"{path}: over {MAX_SCHEDULE_BYTES // (1024 * 1024)} MiB; keep only the periods you need (e.g. the "
            "coming days) and replace the file as new data arrives"
        )
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets write a byte-order mark
    except UnicodeDecodeError as exc:
        raise ScheduleInvalid(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    return parse_schedule(text, path)


def parse_schedule(text: str, path: str) -> CarbonSchedule:
    """Check the rows of a schedule read from `path` (named in errors)."""
    starts: list[float] = []
    ends: list[float] = []
    grams: list[float] = []
    header_seen = False
    for number, fields in _rows(text, path):
        where = f"{path} line {number}"
        if not header_seen:
            if tuple(f.strip().lower() for f in fields) != HEADER:
                raise ScheduleInvalid(f"{where}: the header is {','.join(fields)!r}; {_FIX}")
            header_seen = True
            continue
        if len(fields) != len(HEADER):
            raise ScheduleInvalid(f"{where}: {len(fields)} columns, expected 3 ({','.join(HEADER)})")
        start = _time(fields[0], where, "start_utc")
        end = _time(fields[1], where, "end_utc")
        value = _grams(fields[2], where)
        if end <= start:
            raise ScheduleInvalid(f"{where}: end_utc {fields[1].strip()} is not after start_utc {fields[0].strip()}")
        if starts and start < starts[-1]:
            raise ScheduleInvalid(f"{where}: starts before the row above it; sort the rows by start_utc")
        if ends and start < ends[-1]:
            raise ScheduleInvalid(
                f"{where}: overlaps the row above it (which ends {_iso(ends[-1])}); periods must not overlap"
            )
        if len(starts) == MAX_SCHEDULE_ROWS:
            raise ScheduleInvalid(f"{where}: more than {MAX_SCHEDULE_ROWS} rows; keep only the periods you need")
        starts.append(start)
        ends.append(end)
        grams.append(value)
    if not header_seen:
        raise ScheduleInvalid(f"{path}: the file is empty; {_FIX}")
    if not starts:
        raise ScheduleInvalid(f"{path}: no rows after the header; add at least one period")
    return CarbonSchedule(path, tuple(starts), tuple(ends), tuple(grams))


def _rows(text: str, path: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each line that is not blank or a comment."""
    rows: list[tuple[int, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            rows.append((number, next(csv.reader(io.StringIO(line), strict=True))))
        except csv.Error as exc:
            raise ScheduleInvalid(f"{path} line {number}: not CSV ({exc})") from None
    return rows


def _time(text: str, where: str, column: str) -> float:
    """An ISO-8601 time as Unix seconds; without an offset it is UTC, as the column name says."""
    value = text.strip()
    try:
        moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise ScheduleInvalid(
            f"{where}: {column} {value!r} is not an ISO-8601 time; write e.g. 2026-12-05T13:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _grams(text: str, where: str) -> float:
    value = text.strip()
    try:
        grams = float(value)
    except ValueError:
        grams = float("nan")
    if not 0.0 <= grams <= MAX_GRAMS_PER_KWH:  # NaN fails too
        raise ScheduleInvalid(
            f"{where}: grams_per_kwh {value!r} is not a number from 0 to {MAX_GRAMS_PER_KWH:g} (g CO2e per kWh; "
            "convert kg or t to grams)"
        )
    return grams


def _iso(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
