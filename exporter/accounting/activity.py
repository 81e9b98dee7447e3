"""GPM activity in accounting: SM, tensor and DRAM seconds integrated like busy time, and the waste basis.

Kept apart from the ledger so the ledger only calls in: `ActivityBook` holds what grows, and
`waste_activity` says which activity a device's waste is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.accounting.snapshot import ActivitySnapshot
from exporter.readings import DeviceReading

TIME_BASIS = "time"
SM_BASIS = "sm"


@dataclass
class ActivityBook:
    """One device's integrated GPM activity."""

    sm_seconds: float = 0.0
    tensor_seconds: float = 0.0
    dram_seconds: float = 0.0
    seen: bool = False
    occupancy: float | None = None

    def add(self, reading: DeviceReading) -> None:
        """Integrate a poll's GPM reading; without one the counters stay and the gauge goes."""
        gpm = reading.gpm if reading.up else None
        if gpm is None:
            self.occupancy = None  # unknown now (counters in use, device lost): no stale gauge
            return
        self.seen = True
        self.sm_seconds += gpm.sm_active_seconds
        self.tensor_seconds += gpm.tensor_active_seconds
        self.dram_seconds += gpm.dram_active_seconds
        self.occupancy = gpm.sm_occupancy

    def snapshot(self) -> ActivitySnapshot | None:
        """The counters for exposition; None for a device that never had GPM (no series at all)."""
        if not self.seen:
            return None
        return ActivitySnapshot(self.sm_seconds, self.tensor_seconds, self.dram_seconds, self.occupancy)


def waste_activity(basis: str, reading: DeviceReading) -> tuple[float, str]:
    """The activity (0-1) a device's waste is measured on this interval, and the basis it came from.

    With basis `sm` a device with a GPM reading is measured on SM activity; any other device
    falls back to utilization (kernel time). A lost device, or one whose activity is unknown,
    does no work: 0.
    """
    if basis == SM_BASIS and reading.up and reading.gpm is not None:
        return reading.gpm.sm_activity, SM_BASIS
    utilization = reading.utilization if reading.up and reading.utilization is not None else 0.0
    return utilization, TIME_BASIS
