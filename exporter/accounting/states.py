"""Which of the three states a device was in over an interval."""

from __future__ import annotations

from exporter.readings import DeviceReading

ACTIVE = "active"
IDLE_HELD = "idle_held"
IDLE_FREE = "idle_free"
IDLE_STATES = (IDLE_HELD, IDLE_FREE)


def classify(reading: DeviceReading, idle_threshold: float) -> str:
    """Active above the threshold; otherwise idle_held when a process or memory holds it, else idle_free.

    A device that cannot report activity (MIG without GPM) is never accused of idling while
    something holds it: unknown is not idle. A lost device does no work for anyone: idle_free.
    """
    if not reading.up:
        return IDLE_FREE
    held = bool(reading.processes) or reading.memory_held
    if reading.utilization is None:
        return ACTIVE if held else IDLE_FREE
    if reading.utilization > idle_threshold:
        return ACTIVE
    return IDLE_HELD if held else IDLE_FREE
