"""The contract every source implements."""

from __future__ import annotations

from typing import Protocol

from exporter.readings import SourceReport


class Source(Protocol):
    """A device source polled by the daemon once per collector interval.

    `poll` must never raise: failures are reported in the SourceReport (success False, errors
    counted by reason) so one failing source never takes the others down.
    """

    name: str

    async def start(self) -> None:
        """Begin (spawn subprocesses, initialise libraries); must not raise."""
        ...

    async def poll(self) -> SourceReport:
        """Everything measured since the previous poll."""
        ...

    async def stop(self) -> None:
        """Release everything; no child process may survive this."""
        ...
