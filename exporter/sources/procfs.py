"""Process facts from /proc: user, command, start time and cgroup, without psutil."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exporter.readings import COMMAND_PREFIX_CHARS, ProcessReading
from exporter.users import user_name

__all__ = ["COMMAND_PREFIX_CHARS", "ProcFs", "ProcessFacts", "ProcessFactsReader", "process_reading"]


@dataclass(frozen=True)
class ProcessFacts:
    """What the host knows about a pid; fields are 'unknown'/None when unreadable."""

    user: str = "unknown"
    command: str = ""
    start_time_seconds: float | None = None
    cgroup: str = ""


def process_reading(
    pid: int, used_memory_bytes: int | None, facts: ProcessFacts | None, runtime_tag: str = ""
) -> ProcessReading:
    """A device holder with what /proc knows of it; only pid and memory when /proc does not know it."""
    if facts is None:
        return ProcessReading(pid, used_memory_bytes, runtime_tag=runtime_tag)
    command = facts.command[:COMMAND_PREFIX_CHARS]  # other readers (the simulator) may not bound it
    return ProcessReading(
        pid, used_memory_bytes, facts.user, command, facts.start_time_seconds, facts.cgroup, runtime_tag
    )


class ProcessFactsReader(Protocol):
    """Looks up a pid; returns None when the process does not exist (it exited)."""

    def facts(self, pid: int) -> ProcessFacts | None:
        """Facts for `pid`, or None when it has gone."""
        ...


class ProcFs:
    """Reads /proc (or another root, for tests)."""

    def __init__(self, root: str = "/proc") -> None:
        self._root = Path(root)
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time: float | None = None

    def _btime(self) -> float:
        if self._boot_time is None:
            for line in (self._root / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    self._boot_time = float(line.split()[1])
                    break
            else:
                self._boot_time = 0.0
        return self._boot_time

    def facts(self, pid: int) -> ProcessFacts | None:
        """Facts for `pid`; None when it has exited; 'unknown' fields when access is denied."""
        base = self._root / str(pid)
        try:
            stat = (base / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            return ProcessFacts()
        start: float | None = None
        # Field 2 (comm) may contain spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 19:
            try:
                start = self._btime() + int(fields[19]) / self._ticks
            except (ValueError, OSError):
                start = None
        return ProcessFacts(
            user=self._user(base),
            command=self._command(base),
            start_time_seconds=start,
            cgroup=self._read(base / "cgroup"),
        )

    def _user(self, base: Path) -> str:
        for line in self._read(base / "status").splitlines():
            if line.startswith("Uid:"):
                parts = line.split()
                if len(parts) > 1 and parts[1].isdigit():
                    return user_name(int(parts[1]))
        return "unknown"

    def _command(self, base: Path) -> str:
        try:
            with (base / "cmdline").open("rb") as file:
                head = file.read(COMMAND_PREFIX_CHARS)
        except OSError:
            head = b""
        cmdline = head.decode(errors="replace").replace("\x00", " ").strip()
        return cmdline or self._read(base / "comm").strip()

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""
