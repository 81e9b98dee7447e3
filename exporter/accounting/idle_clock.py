"""The idle clock across restarts: each device's last-active and state-entry times, by UUID.

Without it `accel_idle_seconds` starts again from 0 whenever the exporter restarts (upgrade,
reboot, OOM kill), and every alert that waits for hours of idleness goes silent for those hours.
The marks live in one small JSON file in the state directory, `idle-clock.json`, rewritten
atomically after every poll (temporary file, fsync, rename), so a crash loses at most one poll
interval. A file that cannot be trusted (garbage, truncated, too deeply nested, wrong types,
NaN or infinite numbers, times in the future) is logged once and ignored: the clock then starts
from the first poll, as without a state directory. Nothing here ever raises into the daemon.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.accounting.states import ACTIVE, IDLE_FREE, IDLE_HELD
from exporter.atomic_file import write_atomically
from exporter.config.files import read_regular_file
from exporter.context.errors import LogOnce

log = logging.getLogger(__name__)

FILE_NAME = "idle-clock.json"
# "" when the state is not known (history seeded from a demo scenario).
STATES = (ACTIVE, IDLE_HELD, IDLE_FREE, "")
VERSION = 1
# Ten thousand devices take about 2 MB; anything far larger is not a file this exporter wrote.
MAX_FILE_BYTES = 8 * 1024 * 1024
# Clocks of a host and its NTP source may disagree by a little; more than this is a wrong file.
FUTURE_TOLERANCE_SECONDS = 300.0


@dataclass(frozen=True)
class IdleMark:
    """One device's clock, in Unix seconds: when it was last active, and its state since when.

    The state-entry time is kept so a state's age survives restarts too; accel_idle_seconds
    needs only last_active.
    """

    last_active: float
    state: str
    state_since: float


class IdleClockInvalid(ValueError):
    """The file is not a trustworthy idle clock; the message says what is wrong."""


def parse_marks(text: str, now: float) -> dict[str, IdleMark]:
    """The marks in `text`, the file's content; raises IdleClockInvalid naming the first problem.

    `now` is the current Unix time: a mark from the future means a wrong clock or a wrong file.
    """
    try:
        document = json.loads(text, parse_constant=_no_constant)
    except RecursionError:  # json recurses per nesting level: a deeply nested file must not crash us
        raise IdleClockInvalid("nested too deeply to be an idle clock file") from None
    except ValueError as exc:  # JSONDecodeError, and NaN/Infinity refused by _no_constant
        raise IdleClockInvalid(f"not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise IdleClockInvalid(f"expected an object with version {VERSION}")
    devices = document.get("devices")
    if not isinstance(devices, dict):
        raise IdleClockInvalid("expected 'devices' to be an object of device UUIDs")
    marks = {}
    for uuid, item in devices.items():
        if not uuid or not isinstance(item, dict):
            raise IdleClockInvalid(f"device {_show(uuid)}: expected an object with last_active, state, state_since")
        last_active = _time(item.get("last_active"), uuid, "last_active", now)
        state_since = _time(item.get("state_since"), uuid, "state_since", now)
        state = item.get("state")
        if state not in STATES:
            raise IdleClockInvalid(
                f"device {_show(uuid)}: state {_show(state)} is not one of {', '.join(map(repr, STATES))}"
            )
        marks[uuid] = IdleMark(last_active, state, state_since)
    return marks


def render_marks(marks: Mapping[str, IdleMark]) -> str:
    """The file's content for `marks` (the inverse of parse_marks)."""
    devices = {uuid: vars(mark) for uuid, mark in sorted(marks.items())}
    return json.dumps({"version": VERSION, "devices": devices}, indent=1, sort_keys=True) + "\n"


def _show(value: object) -> str:
    """A value for a log line: repr'd (no control characters), and short even when the file is not."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a time")


def _time(value: object, uuid: str, key: str, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise IdleClockInvalid(f"device {_show(uuid)}: {key} must be a Unix time in seconds, found {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # JSON integers are unbounded
        number = math.inf
    if not math.isfinite(number) or number <= 0:
        raise IdleClockInvalid(f"device {_show(uuid)}: {key} {_show(value)} is not a Unix time")
    if number > now + FUTURE_TOLERANCE_SECONDS:
        raise IdleClockInvalid(f"device {_show(uuid)}: {key} {number:.0f} is in the future (now {now:.0f})")
    return number


class IdleClockFile:
    """`idle-clock.json` in the state directory. Not thread-safe: one saver at a time."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / FILE_NAME
        self._once = LogOnce(log)

    def load(self, now: float) -> dict[str, IdleMark]:
        """The saved marks; empty (and a warning naming the problem) when the file cannot be trusted."""
        try:
            raw = read_regular_file(self.path, MAX_FILE_BYTES)  # a FIFO in its place must not hang the start
        except FileNotFoundError:
            log.info("idle clock: no %s yet; idle times count from the first poll", self.path)
            return {}
        except OSError as exc:
            return self._ignore(f"cannot be read ({exc.strerror or exc})")
        if len(raw) > MAX_FILE_BYTES:
            return self._ignore(f"is larger than {MAX_FILE_BYTES} bytes")
        try:
            marks = parse_marks(raw.decode("utf-8"), now)
        except UnicodeDecodeError:
            return self._ignore("is not UTF-8 text")
        except IdleClockInvalid as exc:
            return self._ignore(str(exc))
        log.info("idle clock: restored %d device(s) from %s", len(marks), self.path)
        return marks

    def _ignore(self, problem: str) -> dict[str, IdleMark]:
        log.warning(
            "idle clock file %s %s; ignoring it, idle times count from the first poll "
            "(it is rewritten at the next poll; delete it to silence this)",
            self.path,
            problem,
        )
        return {}

    def save(self, marks: Mapping[str, IdleMark]) -> bool:
        """Replace the file atomically; False (logged once until a write succeeds) when it cannot be written."""
        try:
            write_atomically(self.path, render_marks(marks))
            self._once.forget("write")
            return True
        except OSError as exc:
            self._once.log(
                "write",
                logging.WARNING,
                "cannot write the idle clock %s (%s); accel_idle_seconds will restart from 0 after a restart",
                self.path,
                exc.strerror or exc,
            )
            return False
