"""A pynvml-compatible module driven by a scenario: the simulated NVIDIA driver.

It implements exactly the calls the NVML source makes, raises the real binding's exception
classes with NVML's codes (so `except pynvml.NVMLError_GpuIsLost` works unchanged), returns the
binding's own ctypes structures where the source reads fields, and produces the driver's
utilization sample buffer from the scenario's exact busy integrals.
"""

from __future__ import annotations

import ctypes
import time
import uuid as uuidlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pynvml

from exporter.clock import Clock
from exporter.sim.patterns import Pattern
from exporter.sim.scenario import Fault, Gpu, MigInstance, Scenario, SimProcess
from exporter.sources.procfs import ProcessFacts

# Constants and types the source uses, taken from the real binding.
NVMLError = pynvml.NVMLError
NVMLError_NotFound = pynvml.NVMLError_NotFound
NVMLError_NotSupported = pynvml.NVMLError_NotSupported
NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
NVMLError_Timeout = pynvml.NVMLError_Timeout
NVMLError_Unknown = pynvml.NVMLError_Unknown
NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
NVML_GPU_UTILIZATION_SAMPLES = pynvml.NVML_GPU_UTILIZATION_SAMPLES
NVML_VALUE_TYPE_UNSIGNED_INT = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
nvmlMemory_v2 = pynvml.nvmlMemory_v2
nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
MAX_MIG_DEVICES = 7


def error_code(name: str) -> int:
    """NVML's code for an exception class name such as `GpuIsLost` or `NVMLError_Unknown`."""
    wanted = name if name.startswith("NVMLError_") else f"NVMLError_{name}"
    cls = getattr(pynvml, wanted, None)
    for code, mapped in NVMLError._valClassMapping.items():
        if mapped is cls:
            return int(code)
    return int(pynvml.NVML_ERROR_UNKNOWN)


@dataclass(frozen=True)
class _Handle:
    gpu: int
    mig: MigInstance | None = None
    generation: int = 0  # driver loads seen when the handle was made; a reload invalidates it


@dataclass(frozen=True)
class _GpmCapture:
    gpu: int
    gi: int | None  # a MIG GPU instance, or None for the whole GPU
    at: float  # scenario time the sample was taken


def _address(sample: Any) -> int:
    """Where an opaque nvmlGpmSample_t points: the key the fake keeps its contents under."""
    return int(ctypes.cast(sample, ctypes.c_void_p).value or 0)


@dataclass(frozen=True)
class _Running:
    pid: int
    device: str
    memory: int
    spec: SimProcess
    started_at: float  # scenario time the process started


class FakeNvml:
    """The simulated driver. Use `module()` to get an object shaped like `pynvml`."""

    def __init__(self, scenario: Scenario, clock: Clock) -> None:
        self.scenario = scenario
        self._clock = clock
        self._start_mono = clock.monotonic()
        self._start_wall = clock.time()
        self._initialised = 0
        self._calls: dict[str, int] = {}
        self._gpus = {g.index: g for g in scenario.gpus}
        self._ordered = sorted(self._gpus)
        self._events_seen: set[tuple[int, float]] = set()
        self._alive: tuple[float, list[_Running]] | None = None
        # GPM samples by address: the buffer that keeps each one alive, and what it captured.
        self._gpm_buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._gpm_samples: dict[int, _GpmCapture] = {}

    # --- time -------------------------------------------------------------------------------
    def now(self) -> float:
        """Scenario time in seconds."""
        return self._clock.monotonic() - self._start_mono

    def _timestamp_us(self, t: float) -> int:
        return round((self._start_wall + t) * 1_000_000)

    # --- faults -----------------------------------------------------------------------------
    def _active(self, fault: Fault, t: float) -> bool:
        return t >= fault.at and (fault.until is None or t < fault.until)

    def _check(self, call: str, gpu: Gpu | None) -> None:
        t = self.now()
        count = self._calls[call] = self._calls.get(call, 0) + 1
        faults = list(self.scenario.nvml_faults) + (list(gpu.faults) if gpu else [])
        for fault in faults:
            if not self._active(fault, t):
                continue
            if fault.type == "lost" and gpu is not None and call != "nvmlDeviceGetHandleByIndex":
                raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            if fault.call not in ("*", call):
                continue
            if fault.type == "unsupported":
                raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            if fault.type == "error" and count % fault.every == 0:
                raise NVMLError(error_code(fault.error))
            if fault.type == "hang":
                # A wedged driver: the call blocks until the fault ends (forever without `until`).
                while self._active(fault, self.now()):
                    time.sleep(0.05)

    def _gpu(self, handle: _Handle, call: str) -> Gpu:
        if self._initialised <= 0:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        gpu = self._gpus[handle.gpu]
        if handle.generation < self._generation():
            # The driver was reloaded: handles from before answer like a GPU that fell off the bus.
            raise NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if handle.mig is not None and handle.mig not in self._live_migs(gpu):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # the GPU instance was destroyed
        self._check(call, gpu)
        return gpu

    def _reloads(self) -> list[float]:
        t = self.now()
        return [f.at for f in self.scenario.nvml_faults if f.type == "reload" and f.at <= t]

    def _generation(self) -> int:
        return len(self._reloads())

    # --- lifecycle ----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:
        if self.scenario.nvml_missing:
            raise NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        t = self.now()
        for fault in self.scenario.nvml_faults:
            if fault.type == "init_error" and self._active(fault, t):
                raise NVMLError(error_code(fault.error))
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._initialised = max(0, self._initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion", None)
        return self.scenario.driver_version

    def nvmlDeviceGetCount(self) -> int:
        if self._initialised <= 0:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self._check("nvmlDeviceGetCount", None)
        return len(self._ordered)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if self._initialised <= 0:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if not 0 <= index < len(self._ordered):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        handle = _Handle(self._ordered[index], generation=self._generation())
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    # --- identity -----------------------------------------------------------------------------
    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        gpu = self._gpu(handle, "nvmlDeviceGetUUID")
        if handle.mig is not None:
            return "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{self._uuid_seed(gpu)}/mig{handle.mig.gi}"))
        return self._gpu_uuid(gpu)

    def _uuid_seed(self, gpu: Gpu) -> str:
        return f"{self.scenario.name}/{self.scenario.host.instance_id}/{gpu.index}"

    def _gpu_uuid(self, gpu: Gpu) -> str:
        return gpu.uuid or "GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, self._uuid_seed(gpu)))

    def last_active_history(self) -> dict[str, float]:
        """The scenario's `last_active` history: Unix time each GPU last computed, by UUID."""
        return {
            self._gpu_uuid(g): self._start_wall + g.last_active for g in self.scenario.gpus if g.last_active is not None
        }

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        gpu = self._gpu(handle, "nvmlDeviceGetName")
        if handle.mig is not None:
            return f"{gpu.model} MIG {handle.mig.slices}g.{handle.mig.memory_total // 2**30}gb"
        return gpu.model

    def nvmlDeviceGetMinorNumber(self, handle: _Handle) -> int:
        return self._gpu(handle, "nvmlDeviceGetMinorNumber").index

    # --- MIG --------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetMigMode")
        mode = NVML_DEVICE_MIG_ENABLE if gpu.mig else 0  # MIG mode stays on while instances come and go
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        self._gpu(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return MAX_MIG_DEVICES

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        gpu = self._gpu(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        live = self._live_migs(gpu)
        if index >= len(live):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(gpu.index, live[index], handle.generation)

    def _live_migs(self, gpu: Gpu) -> list[MigInstance]:
        t = self.now()
        return [m for m in gpu.mig if m.start <= t and (m.end is None or t < m.end)]

    def nvmlDeviceGetGpuInstanceId(self, handle: _Handle) -> int:
        self._gpu(handle, "nvmlDeviceGetGpuInstanceId")
        if handle.mig is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.mig.gi

    def nvmlDeviceGetAttributes_v2(self, handle: _Handle) -> Any:
        self._gpu(handle, "nvmlDeviceGetAttributes_v2")
        attrs = pynvml.c_nvmlDeviceAttributes()
        slices = handle.mig.slices if handle.mig else MAX_MIG_DEVICES
        attrs.gpuInstanceSliceCount = slices
        attrs.computeInstanceSliceCount = slices
        attrs.multiprocessorCount = 14 * slices
        return attrs

    # --- activity ---------------------------------------------------------------------------
    def _no_mig_activity(self, handle: _Handle) -> None:
        # NVML: "On MIG-enabled GPUs, querying device utilization rates is not currently supported".
        if handle.mig is not None or self._gpus[handle.gpu].mig:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetSamples(self, handle: _Handle, sampling_type: int, last_seen_us: int) -> tuple[int, list[Any]]:
        gpu = self._gpu(handle, "nvmlDeviceGetSamples")
        self._no_mig_activity(handle)
        if sampling_type != NVML_GPU_UTILIZATION_SAMPLES:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        period = self.scenario.sample_period
        newest = int(self.now() / period)
        oldest = max(1, newest - self.scenario.buffer_samples + 1)
        if last_seen_us > 0:
            # Start near the caller's last timestamp instead of walking the whole ring buffer, so the
            # simulator's cost does not swamp the exporter's in benchmarks; the loop still checks each one.
            oldest = max(oldest, int((last_seen_us / 1_000_000 - self._start_wall) / period) - 1)
        samples = []
        for k in range(oldest, newest + 1):
            ts = self._timestamp_us(k * period)
            if ts <= last_seen_us:
                continue
            sample = pynvml.c_nvmlSample_t()
            sample.timeStamp = ts
            busy = gpu.utilization.busy((k - 1) * period, k * period)
            sample.sampleValue.uiVal = round(100.0 * busy / period)
            samples.append(sample)
        if not samples:
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return NVML_VALUE_TYPE_UNSIGNED_INT, samples

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        self._no_mig_activity(handle)
        period = self.scenario.sample_period
        end = int(self.now() / period) * period
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = round(100.0 * gpu.utilization.busy(end - period, end) / period) if end > 0 else 0
        rates.memory = 0
        return rates

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        if version == nvmlMemory_v2:
            self._check("nvmlDeviceGetMemoryInfo_v2", gpu)
        total = handle.mig.memory_total if handle.mig else gpu.memory_total
        used = sum(p.memory for p in self._running_on(handle)) + (0 if handle.mig else gpu.memory_baseline)
        info = pynvml.c_nvmlMemory_v2_t() if version == nvmlMemory_v2 else pynvml.c_nvmlMemory_t()
        info.total = total
        info.used = min(used, total)
        info.free = total - info.used
        return info

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetPowerUsage")
        if handle.mig is not None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        level = gpu.utilization.level(self.now())
        return round(1000 * (gpu.power_idle_watts + (gpu.power_max_watts - gpu.power_idle_watts) * level))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu(handle, "nvmlDeviceGetTotalEnergyConsumption")
        if handle.mig is not None:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        t = self.now()
        loaded = max(self._reloads(), default=0.0)  # the driver's counter starts again at each load
        idle, span = gpu.power_idle_watts, gpu.power_max_watts - gpu.power_idle_watts
        joules = idle * (t - loaded) + span * gpu.utilization.busy(loaded, t)
        return int(joules * 1000)

    # --- GPM (Hopper and later) ------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> Any:
        gpu = self._gpu(handle, "nvmlGpmQueryDeviceSupport")
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if gpu.gpm else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._check("nvmlGpmSampleAlloc", None)
        buffer = ctypes.create_string_buffer(16)
        sample = ctypes.cast(buffer, pynvml.c_nvmlGpmSample_t)
        self._gpm_buffers[_address(sample)] = buffer
        return sample

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        address = _address(sample)
        if self._gpm_buffers.pop(address, None) is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._gpm_samples.pop(address, None)

    def nvmlGpmSampleGet(self, handle: _Handle, sample: Any) -> Any:
        gpu = self._gpu(handle, "nvmlGpmSampleGet")
        self._gpm_take(gpu, None, sample)
        return sample

    def nvmlGpmMigSampleGet(self, handle: _Handle, gpu_instance_id: int, sample: Any) -> Any:
        gpu = self._gpu(handle, "nvmlGpmMigSampleGet")
        if not any(m.gi == gpu_instance_id for m in self._live_migs(gpu)):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        self._gpm_take(gpu, gpu_instance_id, sample)
        return sample

    def _gpm_take(self, gpu: Gpu, gi: int | None, sample: Any) -> None:
        if not gpu.gpm:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        address = _address(sample)
        if address not in self._gpm_buffers:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # not from nvmlGpmSampleAlloc, or freed
        self._gpm_samples[address] = _GpmCapture(gpu.index, gi, self.now())

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        self._check("nvmlGpmMetricsGet", None)
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first = self._gpm_samples.get(_address(request.sample1))
        second = self._gpm_samples.get(_address(request.sample2))
        if first is None or second is None or (first.gpu, first.gi) != (second.gpu, second.gi):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if second.at <= first.at:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        patterns = self._gpm_patterns(self._gpus[first.gpu], first.gi)
        for i in range(int(request.numMetrics)):
            entry = request.metrics[i]
            pattern = patterns.get(int(entry.metricId))
            if pattern is None:
                entry.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                entry.value = 0.0
            else:  # the metric's average between the samples, in percent, as NVML defines it
                entry.nvmlReturn = pynvml.NVML_SUCCESS
                entry.value = 100.0 * pattern.busy(first.at, second.at) / (second.at - first.at)
        return request

    def _gpm_patterns(self, gpu: Gpu, gi: int | None) -> dict[int, Pattern]:
        """The scenario patterns behind each simulated GPM metric, for a GPU or one of its MIG instances."""
        if gi is None:
            own = (gpu.utilization, gpu.sm_activity, gpu.tensor_activity, gpu.sm_occupancy, gpu.dram_activity)
        else:
            # A MIG instance's occupancy and DRAM traffic simply follow its SM activity here.
            mig = next(m for m in gpu.mig if m.gi == gi)
            own = (mig.utilization, mig.sm_activity, mig.tensor_activity, mig.sm_activity, mig.sm_activity)
        ids = (
            pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
            pynvml.NVML_GPM_METRIC_SM_UTIL,
            pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
            pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
            pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        )
        return dict(zip(ids, own, strict=True))

    def gpm_truth(self, device: str, metric: int, a: float, b: float) -> float:
        """Ground truth for tests: a GPM metric's exact active seconds on `device` ("0" or "0/1") in [a, b]."""
        index, _, gi = device.partition("/")
        return self._gpm_patterns(self._gpus[int(index)], int(gi) if gi else None)[metric].busy(a, b)

    # --- processes ----------------------------------------------------------------------------
    def running_processes(self) -> list[_Running]:
        """Every simulated process alive now (the simulator's /proc)."""
        t = self.now()
        if self._alive is not None and self._alive[0] == t:
            return self._alive[1]  # asked once per device and per pid in a poll: compute once per instant
        alive: list[_Running] = []
        for spec in self.scenario.processes:
            if spec.every > 0:
                first = max(0, int((t - spec.start - spec.lifetime) // spec.every))
                k = first
                while spec.start + k * spec.every <= t:
                    born = spec.start + k * spec.every
                    if t < born + spec.lifetime and (spec.end is None or born < spec.end):
                        alive.append(_Running(spec.pid + k, spec.device, spec.memory, spec, born))
                    k += 1
            elif t >= spec.start and (spec.end is None or t < spec.end):
                alive.append(_Running(spec.pid, spec.device, spec.memory, spec, spec.started))
        self._alive = (t, alive)
        return alive

    def _device_key(self, handle: _Handle) -> str:
        return f"{handle.gpu}/{handle.mig.gi}" if handle.mig else str(handle.gpu)

    def _running_on(self, handle: _Handle) -> list[_Running]:
        key = self._device_key(handle)
        if handle.mig is None and self._gpus[handle.gpu].mig:
            return [p for p in self.running_processes() if p.device.split("/")[0] == key]
        return [p for p in self.running_processes() if p.device == key]

    def _process_list(self, handle: _Handle, call: str) -> list[Any]:
        self._gpu(handle, call)
        out = []
        for proc in self._running_on(handle):
            gi = int(proc.device.split("/")[1]) if "/" in proc.device else 0xFFFFFFFF
            out.append(
                SimpleNamespace(
                    pid=proc.pid,
                    usedGpuMemory=proc.memory,
                    gpuInstanceId=gi,
                    computeInstanceId=0 if "/" in proc.device else 0xFFFFFFFF,
                )
            )
        return out

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: _Handle) -> list[Any]:
        return self._process_list(handle, "nvmlDeviceGetComputeRunningProcesses_v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: _Handle) -> list[Any]:
        return self._process_list(handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle: _Handle) -> list[Any]:
        self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses_v3")
        return []

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: _Handle) -> list[Any]:
        self._gpu(handle, "nvmlDeviceGetGraphicsRunningProcesses_v2")
        return []

    # --- XID events -----------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> object:
        self._check("nvmlEventSetCreate", None)
        return object()

    def nvmlDeviceRegisterEvents(self, handle: _Handle, event_types: int, event_set: object) -> None:
        self._gpu(handle, "nvmlDeviceRegisterEvents")

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        t = self.now()
        for gpu in self.scenario.gpus:
            for fault in gpu.faults:
                key = (gpu.index, fault.at)
                if fault.type == "xid" and t >= fault.at and key not in self._events_seen:
                    self._events_seen.add(key)
                    return SimpleNamespace(
                        device=_Handle(gpu.index),
                        eventType=nvmlEventTypeXidCriticalError,
                        eventData=fault.xid,
                        gpuInstanceId=0xFFFFFFFF,
                        computeInstanceId=0xFFFFFFFF,
                    )
        raise NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    # --- plumbing ---------------------------------------------------------------------------------
    def module(self) -> Any:
        """An object with pynvml's attribute names: constants, exceptions and the calls above."""
        names: dict[str, Any] = {name: getattr(self, name) for name in dir(self) if name.startswith("nvml")}
        for name in dir(pynvml):
            if name.startswith(("NVMLError", "NVML_", "nvmlEventType", "nvmlMemory_v", "c_nvmlGpm")):
                names.setdefault(name, getattr(pynvml, name))
        return SimpleNamespace(**names)


class SimProcFs:
    """The simulator's /proc: facts for the processes alive in the scenario."""

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake

    def facts(self, pid: int) -> ProcessFacts | None:
        """Facts for a simulated pid, or None when it is not alive."""
        for proc in self._fake.running_processes():
            if proc.pid == pid:
                wall = self._fake._start_wall + proc.started_at
                return ProcessFacts(
                    user=proc.spec.user, command=proc.spec.command, start_time_seconds=wall, cgroup=proc.spec.cgroup
                )
        return None
