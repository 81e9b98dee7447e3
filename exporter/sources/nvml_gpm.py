"""NVML GPU Performance Monitoring (GPM): SM, tensor and DRAM activity on Hopper and later.

GPM samples are snapshots of the GPU's performance counters; `nvmlGpmMetricsGet` turns two of
them into each metric's average over the time between them. Each read takes a new sample and
measures against the previous one, so consecutive intervals tile time with no gap: the
integrated seconds are exact over any window, however far apart the reads are.

Runs on the NVML worker thread only, like every other NVML call. The module is the injected
`pynvml` (real or simulated).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from exporter.clock import Clock
from exporter.readings import GpmReading

log = logging.getLogger(__name__)

# GPM samples cost a driver round trip each; like the utilization buffer, nothing is lost by
# reading them less often than every poll (the next read covers the whole gap).
GPM_READ_SECONDS = 5.0
DUE_SHARE = 0.75  # as for the sample buffer: polls at exactly the period never skip a read
# Metric ids from nvml.h (NVML_GPM_METRIC_*); the values are percentages, 0-100.
GRAPHICS_UTIL = 1
SM_UTIL = 2
SM_OCCUPANCY = 3
ANY_TENSOR_UTIL = 5
DRAM_BW_UTIL = 10
METRIC_IDS = (GRAPHICS_UTIL, SM_UTIL, SM_OCCUPANCY, ANY_TENSOR_UTIL, DRAM_BW_UTIL)
IN_USE_REASON = "gpm_in_use"


@dataclass
class GpmState:
    """One device's GPM bookkeeping; mutable, lives only inside the NVML worker thread."""

    checked: bool = False
    supported: bool = False
    previous: Any = None  # the sample the next interval starts at
    spare: Any = None  # an allocated sample to take the next one into
    taken_at: float | None = None  # monotonic time `previous` was taken
    in_use: bool = False
    last: GpmReading | None = None
    graphics_activity: float | None = None


@dataclass(frozen=True)
class GpmTarget:
    """What to sample: a whole GPU (`gi` None) or one MIG GPU instance of `handle`'s GPU."""

    device: str
    handle: Any  # the physical GPU's handle, also for a MIG instance
    gi: int | None = None


@dataclass(frozen=True)
class GpmResult:
    """A read: the reading for accounting, and graphics activity (busy time) for MIG instances."""

    reading: GpmReading
    graphics_seconds: float
    graphics_activity: float


class GpmSampler:
    """Reads GPM for the devices that support it; see the module docstring."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def read(self, nvml: Any, state: GpmState, target: GpmTarget, errors: Counter[str], now: float) -> GpmResult | None:
        """GPM activity since the previous read; None when unknown (unsupported, in use, first sample).

        Lost-GPU errors propagate; every other failure is counted in `errors` and logged once.
        """
        if not state.checked:
            state.checked = True
            state.supported = self._supported(nvml, target)
        if not state.supported:
            return None
        if (
            state.previous is not None
            and state.taken_at is not None
            and now - state.taken_at < GPM_READ_SECONDS * DUE_SHARE
        ):
            return self._between(state)  # the counters wait for the next read
        try:
            if state.spare is None:
                state.spare = nvml.nvmlGpmSampleAlloc()
            sample = state.spare
            taken_at = self._clock.monotonic()
            if target.gi is None:
                nvml.nvmlGpmSampleGet(target.handle, sample)
            else:
                nvml.nvmlGpmMigSampleGet(target.handle, target.gi, sample)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown):
            raise  # the caller marks the GPU lost
        except nvml.NVMLError_InUse:
            self._in_use(state, target, errors)
            return None
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound) as exc:
            state.supported = False
            log.info("%s: GPM sampling refused (%s); SM and tensor activity are absent", target.device, exc)
            return None
        except nvml.NVMLError as exc:
            errors[f"gpm_{_reason(exc)}"] += 1
            return self._between(state)
        if state.in_use:
            state.in_use = False
            log.warning("%s: GPM counters are free again; SM and tensor activity resume", target.device)
        if state.previous is None or state.taken_at is None:
            state.previous, state.spare, state.taken_at = sample, None, taken_at
            return None  # the first sample only starts the first interval
        values = self._metrics(nvml, state.previous, sample, target, errors)
        if values is None:
            return self._between(state)  # keep the old start: the next read covers this interval too
        seconds = max(0.0, taken_at - state.taken_at)
        state.previous, state.spare, state.taken_at = sample, state.previous, taken_at
        reading = GpmReading(
            covered_seconds=seconds,
            sm_active_seconds=seconds * values[SM_UTIL],
            tensor_active_seconds=seconds * values[ANY_TENSOR_UTIL],
            dram_active_seconds=seconds * values[DRAM_BW_UTIL],
            sm_activity=values[SM_UTIL],
            sm_occupancy=values[SM_OCCUPANCY],
            tensor_activity=values[ANY_TENSOR_UTIL],
            dram_activity=values[DRAM_BW_UTIL],
        )
        state.last = reading
        state.graphics_activity = values[GRAPHICS_UTIL]
        return GpmResult(reading, seconds * values[GRAPHICS_UTIL], values[GRAPHICS_UTIL])

    def free(self, nvml: Any, state: GpmState) -> None:
        """Release the device's samples (at shutdown or when the device goes away)."""
        for sample in (state.previous, state.spare):
            if sample is not None:
                try:
                    nvml.nvmlGpmSampleFree(sample)
                except Exception as exc:  # a GPU already gone: nothing left to release
                    log.debug("nvmlGpmSampleFree failed: %s", exc)
        state.previous = state.spare = state.taken_at = None

    @staticmethod
    def _between(state: GpmState) -> GpmResult | None:
        last = state.last
        if last is None or state.graphics_activity is None:
            return None
        idle = GpmReading(
            0.0, 0.0, 0.0, 0.0, last.sm_activity, last.sm_occupancy, last.tensor_activity, last.dram_activity
        )
        return GpmResult(idle, 0.0, state.graphics_activity)

    def _supported(self, nvml: Any, target: GpmTarget) -> bool:
        """Ask the driver once per device; a GPU without GPM gets one log line saying why."""
        if not hasattr(nvml, "nvmlGpmQueryDeviceSupport"):
            why = "the installed nvidia-ml-py has no GPM calls; upgrade it"
        else:
            try:
                support = nvml.nvmlGpmQueryDeviceSupport(target.handle)
            except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown):
                raise
            except nvml.NVMLError_FunctionNotFound:
                why = "the driver has no GPM calls (a newer driver has them)"
            except nvml.NVMLError_NotSupported:
                why = "the driver says this GPU has no GPM (it needs Hopper or later)"
            except nvml.NVMLError as exc:
                why = f"nvmlGpmQueryDeviceSupport failed ({exc})"
            else:
                if support.isSupportedDevice:
                    log.info("%s: GPM available: SM, tensor and DRAM activity are measured", target.device)
                    return True
                why = "nvmlGpmQueryDeviceSupport says this GPU has no GPM (it needs Hopper or later)"
        log.info("%s: no SM or tensor activity: %s", target.device, why)
        return False

    def _in_use(self, state: GpmState, target: GpmTarget, errors: Counter[str]) -> None:
        """Someone else (DCGM profiling) holds the counters: count it, log once, restart the interval later."""
        errors[IN_USE_REASON] += 1
        if not state.in_use:
            state.in_use = True
            log.warning(
                "%s: GPM counters are in use by another client (DCGM profiling?); SM and tensor activity "
                "pause until they are free (see docs/gpm.md for choosing between them)",
                target.device,
            )
        # An interval across the outage would mix someone else's counter setup into ours: restart.
        if state.previous is not None:
            state.previous, state.spare = None, state.previous if state.spare is None else state.spare
        state.taken_at = None
        state.last = None
        state.graphics_activity = None

    @staticmethod
    def _metrics(
        nvml: Any, first: Any, second: Any, target: GpmTarget, errors: Counter[str]
    ) -> dict[int, float] | None:
        """Each metric's average between two samples, as a ratio (0-1); None when the driver could not say."""
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(METRIC_IDS)
        request.sample1 = first
        request.sample2 = second
        for i, metric in enumerate(METRIC_IDS):
            request.metrics[i].metricId = metric
        try:
            answer = nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError_InUse:
            errors[IN_USE_REASON] += 1
            return None
        except nvml.NVMLError as exc:
            errors[f"gpm_{_reason(exc)}"] += 1
            return None
        values: dict[int, float] = {}
        for i, metric in enumerate(METRIC_IDS):
            entry = answer.metrics[i]
            if int(entry.nvmlReturn) != 0:
                errors["gpm_metric_failed"] += 1
                log.debug("%s: GPM metric %d failed with NVML code %d", target.device, metric, int(entry.nvmlReturn))
                return None
            values[metric] = min(1.0, max(0.0, float(entry.value) / 100.0))
        return values


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else name
