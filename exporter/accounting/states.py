"""Which of the three states a device was in over an interval."""

from __future__ import annotations

from exporter.readings import DeviceReading

ACTIVE = "active"
IDLE_HELD = "idle_held"
IDLE_FREE = "idle_free"
IDLE_STATES = (IDLE_HELD, IDLE_FREE)
# A fully sliced MIG parent: its instances carry the whole GPU, so it has no state of its own
# (no accel_state, state seconds or idle clock series) and can raise no idle alert.
NO_STATE = ""


def classify(reading: DeviceReading, idle_threshold: float, noise_floor: float = 0.0) -> str:
    """Active above the threshold; otherwise idle_held when a process or memory holds it, else idle_free.

    A device nobody holds stays idle_free up to `noise_floor` as well: monitoring agents and
    driver housekeeping keep an unused GPU at 1-2 %, which is no work for anyone.

    A device that cannot report activity (MIG without GPM) is never accused of idling while
    something holds it: unknown is not idle. A lost device does no work for anyone: idle_free.
    """
    if reading.identity.mig_parent and reading.identity.price_units <= 0:
        return NO_STATE
    if not reading.up:
        return IDLE_FREE
    held = bool(reading.processes) or reading.memory_held
    if reading.utilization is None:
        return ACTIVE if held else IDLE_FREE
    if held:
        return ACTIVE if reading.utilization > idle_threshold else IDLE_HELD
    return ACTIVE if reading.utilization > max(idle_threshold, noise_floor) else IDLE_FREE
