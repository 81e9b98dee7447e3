"""The NVIDIA source: every GPU and MIG instance through NVML (the `pynvml` API).

NVML calls block, so every call runs on one dedicated worker thread. The module is injected:
production passes the real `pynvml` from nvidia-ml-py, the simulator passes its fake, and the
code below cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

from exporter.clock import Clock
from exporter.readings import CounterDelta, DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.sources.nvml_gpm import GpmResult, GpmSampler, GpmState, GpmTarget
from exporter.sources.procfs import ProcessFacts, ProcessFactsReader, process_reading
from exporter.workers import SerialDaemonExecutor

log = logging.getLogger(__name__)

NO_ID = 0xFFFFFFFF
MIG_SLICES_DEFAULT = 7  # A100, H100, H200, B200 have 7 compute slices
MIG_SLICES_BY_MODEL = {"A30": 4}
MAX_EVENTS_PER_POLL = 256
NO_DRIVER_REASONS = frozenset({"LibraryNotFound", "DriverNotLoaded", "ImportError", "ModuleNotFoundError"})
INVENTORY_SECONDS = 60.0  # how often MIG layouts and hot-plugged GPUs are looked for
REINIT_AFTER_POLLS = 3  # every GPU lost this many polls in a row: re-initialise NVML
# The energy counter and the utilization sample buffer each cost about 1-3 ms of CPU per call on
# a GSP-based driver (measured on an H200, driver 580: bench/nvml_cost.py), against microseconds
# for the rest. Neither loses anything by being read less often than every poll: the counter
# keeps counting, and the buffer keeps its samples until the next read.
ENERGY_READ_SECONDS = 10.0
SAMPLES_READ_SECONDS = 5.0
# A read is due once this share of its period has passed, so that polls at exactly the period
# (5 s, the default interval) never skip one to clock jitter.
DUE_SHARE = 0.75
_VALUE_FIELDS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class DeviceLost(Exception):
    """The device stopped answering (GpuIsLost, or Unknown, which usually means a dying GPU)."""


def load_pynvml() -> Any:
    """Import NVIDIA's binding and check it is the real one (not a foreign `pynvml.py`)."""
    import pynvml

    if not hasattr(pynvml, "nvmlInitWithFlags") or not hasattr(pynvml, "_nvmlGetFunctionPointer"):
        raise ImportError(
            "the installed 'pynvml' module is not NVIDIA's nvidia-ml-py; uninstall 'pynvml' and install 'nvidia-ml-py'"
        )
    return pynvml


@dataclass
class _Device:
    """Mutable per-device driver state; it lives only inside the NVML worker thread."""

    handle: Any
    identity: DeviceIdentity
    is_mig: bool = False
    mig_enabled: bool = False
    slices: int = 0  # compute slices of a MIG instance
    last_seen_us: int | None = None
    sample_period_us: int | None = None
    last_utilization: float | None = None
    last_poll: float | None = None
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    # Set when the device could not even be identified at enumeration (e.g. lost before start):
    # it is kept as a row with accel_device_up 0 instead of hiding every other GPU.
    unreadable: str = ""
    index: int = -1  # NVML enumeration index, to identify an unreadable GPU again
    reported: set[str] = field(default_factory=set)  # unexpected failures already logged
    energy_read_at: float | None = None
    samples_read_at: float | None = None
    # How far back the driver's sample buffer reaches, seen on whole-buffer reads and overflows.
    buffer_span_seconds: float | None = None
    gpm_target: GpmTarget | None = None  # None: not sampled (a MIG parent, an unreadable GPU)
    gpm: GpmState = field(default_factory=GpmState)


class NvmlSource:
    """Polls NVML; see the module docstring."""

    name = "nvml"

    def __init__(
        self,
        load_module: Callable[[], Any],
        clock: Clock,
        proc_reader: ProcessFactsReader,
        *,
        retry_initial: float = 5.0,
        retry_max: float = 300.0,
    ) -> None:
        self._load_module = load_module
        self._clock = clock
        self._proc = proc_reader
        self._nvml: Any = None
        self._executor = SerialDaemonExecutor("nvml")
        self._devices: list[_Device] = []
        self._by_uuid: dict[str, _Device] = {}
        self._event_set: Any = None
        self._initialised = False
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._retry_delay = retry_initial
        self._next_init = 0.0
        self._init_problem = ""
        self._known: tuple[DeviceIdentity, ...] = ()
        self._driver = ""
        # True while NVML cannot even load: no NVIDIA driver or binding on this host.
        self.no_driver = False
        # Errors of the first initialisation, reported with the first poll.
        self._start_errors: Counter[str] = Counter()
        self._all_lost_polls = 0
        self._next_inventory = 0.0
        self._reinit_delay = retry_initial
        self._gpm = GpmSampler(clock)

    async def start(self) -> None:
        """Initialise NVML on the worker thread; failure is logged and retried by `poll`."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._try_init, self._start_errors)

    async def poll(self) -> SourceReport:
        """Read every device; never raises."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._poll_sync)

    async def stop(self) -> None:
        """Shut NVML down and stop the worker thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._shutdown)
        self._executor.shutdown(wait=False)

    # --- lifecycle (worker thread) ------------------------------------------------------------
    def _try_init(self, errors: Counter[str]) -> None:
        now = self._clock.monotonic()
        if self._initialised or now < self._next_init:
            return
        try:
            if self._nvml is None:
                self._nvml = self._load_module()
            self._nvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            reason = _reason(exc)
            self.no_driver = reason in NO_DRIVER_REASONS
            errors[reason] += 1
            problem = f"{reason}: {exc}"
            if problem != self._init_problem:
                log.error(
                    "NVML unavailable (%s); GPU metrics are off, retrying with backoff up to %.0fs. %s",
                    problem,
                    self._retry_max,
                    _hint(reason),
                )
                self._init_problem = problem
            self._next_init = now + self._retry_delay
            self._retry_delay = min(self._retry_max, self._retry_delay * 2)
            return
        self._initialised = True
        self.no_driver = False
        self._retry_delay = self._retry_initial
        self._init_problem = ""
        try:
            self._enumerate()
        except Exception as exc:
            errors[_reason(exc)] += 1
            log.error("NVML initialised but enumerating GPUs failed (%s); will retry", exc)
            self._shutdown()
            self._next_init = now + self._retry_delay
            return
        log.info(
            "NVML ready: %d device(s), driver %s",
            len(self._devices),
            self._devices[0].identity.driver_version if self._devices else "?",
        )

    def _shutdown(self) -> None:
        if self._initialised and self._nvml is not None:
            for dev in self._devices:
                self._gpm.free(self._nvml, dev.gpm)
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._initialised = False
        self._event_set = None

    def _enumerate(self) -> None:
        nvml = self._nvml
        self._driver = _text(nvml.nvmlSystemGetDriverVersion())
        devices: list[_Device] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            devices.extend(self._identify(index))
        self._set_devices(devices)
        self._register_events()
        self._next_inventory = self._clock.monotonic() + INVENTORY_SECONDS

    def _identify(self, index: int) -> list[_Device]:
        """The GPU at `index` and its MIG instances; a dead GPU becomes one unreadable row."""
        nvml = self._nvml
        driver = self._driver
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            model = _text(nvml.nvmlDeviceGetName(handle))
            try:
                minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
            except nvml.NVMLError:
                minor = index  # Windows and some containers: fall back to the enumeration index
            name = f"nvidia{minor}"
            total_slices, migs = self._mig_children(handle, name, model, driver)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            # One dead GPU (fallen off the bus before we started) must not hide the others. Other
            # errors may be transient: they fail the enumeration, which is retried as a whole.
            log.error("GPU at index %d cannot be identified (%s); it shows as nvidia%d, down", index, exc, index)
            identity = DeviceIdentity(f"nvidia{index}", "", "nvidia", "", "gpu", "", driver)
            return [_Device(None, identity, lost=True, unreadable=_reason(exc), index=index)]
        # In whole slices, not by subtracting floats: a fully sliced GPU leaves exactly 0 (not a
        # 1e-16 residue that priced and alerted on the parent), a partly sliced one exactly k/7.
        free = max(0, total_slices - sum(m.slices for m in migs))
        identity = DeviceIdentity(
            name,
            uuid,
            "nvidia",
            model,
            "gpu",
            "",
            driver,
            physical=True,
            price_units=free / total_slices if migs else 1.0,
            mig_parent=bool(migs),
        )
        gpu = _Device(handle, identity, mig_enabled=bool(migs), index=index, gpm_target=GpmTarget(name, handle))
        return [gpu, *migs]

    def _set_devices(self, devices: list[_Device]) -> None:
        self._devices = devices
        self._by_uuid = {d.identity.uuid: d for d in devices if d.identity.uuid}
        self._known = tuple(d.identity for d in devices)

    def _refresh_inventory(self) -> None:
        """Every INVENTORY_SECONDS, enumerate again: MIG instances are created and destroyed, GPUs hot-plugged.

        Devices that did not change keep their state (sample timestamps, cached unsupported calls).
        """
        now = self._clock.monotonic()
        if now < self._next_inventory or any(d.lost for d in self._devices):
            return  # while a GPU is lost, its recovery is handled per device
        self._next_inventory = now + INVENTORY_SECONDS
        nvml = self._nvml
        try:
            fresh = [d for index in range(nvml.nvmlDeviceGetCount()) for d in self._identify(index)]
        except nvml.NVMLError as exc:
            log.debug("inventory refresh failed: %s", exc)
            return
        if any(d.unreadable for d in fresh):
            return  # a GPU stopped answering: that is handled as a loss, not as a new layout
        previous = {d.identity.uuid: d for d in self._devices}
        merged = []
        for dev in fresh:
            kept = previous.get(dev.identity.uuid)
            merged.append(kept if kept is not None and kept.identity == dev.identity else dev)
        if [d.identity for d in merged] == [d.identity for d in self._devices]:
            return
        added = sorted({d.identity.device for d in merged} - {d.identity.device for d in self._devices})
        gone = sorted({d.identity.device for d in self._devices} - {d.identity.device for d in merged})
        log.info("device inventory changed: added %s, gone %s", ", ".join(added) or "none", ", ".join(gone) or "none")
        for dev in merged:
            if dev not in self._devices and not dev.is_mig and self._event_set is not None:
                try:
                    nvml.nvmlDeviceRegisterEvents(dev.handle, nvml.nvmlEventTypeXidCriticalError, self._event_set)
                except nvml.NVMLError as exc:
                    log.debug("XID events not available on %s: %s", dev.identity.device, exc)
        for dev in self._devices:
            if dev not in merged:
                self._gpm.free(nvml, dev.gpm)  # a destroyed MIG instance or unplugged GPU
        self._set_devices(merged)

    def _reidentify(self) -> None:
        """Try again to identify GPUs that were dead at enumeration; a GPU that comes back is found."""
        nvml = self._nvml
        devices: list[_Device] = []
        found = False
        for dev in self._devices:
            if not dev.unreadable:
                devices.append(dev)
                continue
            try:
                replacement = self._identify(dev.index)
            except nvml.NVMLError:
                replacement = [dev]
            if not replacement[0].unreadable:
                log.warning(
                    "GPU at index %d answers again as %s (%s)",
                    dev.index,
                    replacement[0].identity.device,
                    replacement[0].identity.uuid,
                )
                found = True
                if self._event_set is not None:
                    try:
                        nvml.nvmlDeviceRegisterEvents(
                            replacement[0].handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
                        )
                    except nvml.NVMLError as exc:
                        log.debug("XID events not available on %s: %s", replacement[0].identity.device, exc)
                devices.extend(replacement)
            else:
                devices.append(dev)
        if found:
            self._set_devices(devices)

    def _mig_children(self, handle: Any, parent: str, model: str, driver: str) -> tuple[int, list[_Device]]:
        """The GPU's compute slice count and its MIG instances (none when MIG is off)."""
        nvml = self._nvml
        total_slices = next((n for key, n in MIG_SLICES_BY_MODEL.items() if key in model), MIG_SLICES_DEFAULT)
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:
            return total_slices, []
        if current != nvml.NVML_DEVICE_MIG_ENABLE:
            return total_slices, []
        children = []
        for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except nvml.NVMLError:
                continue  # empty slot (NotFound / InvalidArgument)
            gi = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
            try:
                slices = int(nvml.nvmlDeviceGetAttributes_v2(mig).gpuInstanceSliceCount)
            except nvml.NVMLError:
                slices = 1
            identity = DeviceIdentity(
                device=f"{parent}-mig{gi}",
                uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                vendor="nvidia",
                model=_text(nvml.nvmlDeviceGetName(mig)),
                kind="mig",
                parent=parent,
                driver_version=driver,
                physical=False,
                price_units=min(slices, total_slices) / total_slices,
            )
            target = GpmTarget(identity.device, handle, gi)  # sampled through the parent GPU's handle
            children.append(_Device(mig, identity, is_mig=True, slices=min(slices, total_slices), gpm_target=target))
        return total_slices, children

    def _register_events(self) -> None:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
            for dev in self._devices:
                if not dev.is_mig and not dev.unreadable:
                    try:
                        nvml.nvmlDeviceRegisterEvents(dev.handle, nvml.nvmlEventTypeXidCriticalError, self._event_set)
                    except nvml.NVMLError as exc:
                        log.debug("XID events not available on %s: %s", dev.identity.device, exc)
        except (nvml.NVMLError, AttributeError) as exc:
            log.info("XID events unavailable: %s", exc)
            self._event_set = None

    # --- polling (worker thread) ---------------------------------------------------------------
    def _poll_sync(self) -> SourceReport:
        started = self._clock.monotonic()
        errors: Counter[str] = self._start_errors
        self._start_errors = Counter()
        self._try_init(errors)
        if not self._initialised:
            readings = tuple(DeviceReading(identity=i, up=False) for i in self._known)
            return SourceReport(
                self.name,
                readings,
                False,
                self._clock.monotonic() - started,
                self._clock.time(),
                tuple(errors.items()),
                complete=False,
                message=self._init_problem,
            )
        if any(d.unreadable for d in self._devices):
            self._reidentify()
        else:
            self._refresh_inventory()
        readings_list = []
        # A process on several GPUs (or MIG instances) is looked up in /proc once per poll.
        facts: dict[int, ProcessFacts | None] = {}
        for dev in self._devices:
            try:
                readings_list.append(self._read(dev, errors, facts))
                if dev.lost:
                    log.warning("GPU %s answers again", dev.identity.device)
                    dev.lost = False
            except DeviceLost as exc:
                errors[str(exc)] += 1
                if not dev.lost:
                    log.error(
                        "GPU %s (%s) is lost: %s; its metrics show accel_device_up 0",
                        dev.identity.device,
                        dev.identity.uuid,
                        exc,
                    )
                    dev.lost = True
                dev.last_seen_us = None  # history after a loss is not trustworthy
                self._gpm.free(self._nvml, dev.gpm)  # nor a GPM sample from before it
                dev.last_poll = self._clock.monotonic()  # this interval is accounted as down
                readings_list.append(DeviceReading(identity=dev.identity, up=False))
            except Exception as exc:  # an answer nobody foresaw must not hide the other GPUs
                reason = f"unexpected_{type(exc).__name__}"
                errors[reason] += 1
                if reason not in dev.reported:
                    dev.reported.add(reason)
                    log.error(
                        "GPU %s: unexpected answer from NVML (%s: %s); it shows accel_device_up 0 while this lasts",
                        dev.identity.device,
                        type(exc).__name__,
                        exc,
                    )
                readings_list.append(DeviceReading(identity=dev.identity, up=False))
        self._reinit_if_all_lost(readings_list)
        counters = self._drain_events(errors)
        readings = tuple(readings_list)
        if counters:
            readings = tuple(replace(r, counters=r.counters + counters.get(r.identity.device, ())) for r in readings)
        success = all(r.up for r in readings)
        return SourceReport(
            self.name, readings, success, self._clock.monotonic() - started, self._clock.time(), tuple(errors.items())
        )

    def _reinit_if_all_lost(self, readings: list[DeviceReading]) -> None:
        """Every GPU lost for several polls looks like a driver reload or reset: start NVML afresh.

        Handles from before a reload never answer again, so the session is shut down and the
        next poll initialises and enumerates anew (with growing delays if that does not help).
        """
        physical = [r for r in readings if r.identity.kind == "gpu"]
        if not physical or any(r.up for r in physical):
            self._all_lost_polls = 0
            self._reinit_delay = self._retry_initial
            return
        self._all_lost_polls += 1
        if self._all_lost_polls < REINIT_AFTER_POLLS:
            return
        log.warning(
            "every GPU has been lost for %d polls: re-initialising NVML (driver reload or reset?)", self._all_lost_polls
        )
        self._shutdown()
        self._all_lost_polls = 0
        self._next_init = self._clock.monotonic() + self._reinit_delay
        self._reinit_delay = min(self._retry_max, self._reinit_delay * 2)

    def _call(self, dev: _Device, name: str, errors: Counter[str], *args: Any, **kwargs: Any) -> Any:
        """One NVML call: None for unsupported fields, DeviceLost for a dead GPU, others counted."""
        if name in dev.unsupported:
            return None
        nvml = self._nvml
        try:
            return getattr(nvml, name)(dev.handle, *args, **kwargs)
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
            dev.unsupported.add(name)  # cache the negative answer: no retry, no log per tick
            return None
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            raise DeviceLost(_reason(exc)) from None
        except nvml.NVMLError as exc:
            errors[_reason(exc)] += 1
            return None
        except UnicodeDecodeError:
            errors["Unknown"] += 1
            return None

    def _read(self, dev: _Device, errors: Counter[str], facts: dict[int, ProcessFacts | None]) -> DeviceReading:
        if dev.unreadable:
            raise DeviceLost(dev.unreadable)
        now = self._clock.monotonic()
        memory = self._memory(dev, errors)
        busy: float | None = None
        covered = 0.0
        utilization: float | None = None
        power = energy = None
        if not dev.is_mig:  # power and energy are device-wide: read on the physical GPU
            milliwatts = self._call(dev, "nvmlDeviceGetPowerUsage", errors)
            power = milliwatts / 1000.0 if milliwatts is not None else None
            if _due(dev.energy_read_at, ENERGY_READ_SECONDS, now):
                dev.energy_read_at = now
                millijoules = self._call(dev, "nvmlDeviceGetTotalEnergyConsumption", errors)
                energy = millijoules / 1000.0 if millijoules is not None else None
        processes = () if dev.mig_enabled else self._processes(dev, errors, facts)
        if not dev.is_mig and not dev.mig_enabled:
            # A GPU in MIG mode reports no activity of its own; its instances have none through NVML.
            # Read last: it consumes samples from the buffer, and a failure in any read above must
            # leave them there for the next poll.
            busy, covered, utilization = self._activity(dev, errors, now)
        gpm = self._read_gpm(dev, errors, now)
        if dev.is_mig and gpm is not None:
            # NVML has no utilization for MIG instances; GPM's graphics activity is their busy time.
            busy, covered, utilization = gpm.graphics_seconds, gpm.reading.covered_seconds, gpm.graphics_activity
        dev.last_poll = now
        return DeviceReading(
            identity=dev.identity,
            up=True,
            busy_seconds=busy,
            covered_seconds=covered,
            utilization=utilization,
            memory_used_bytes=memory[0] if memory else None,
            memory_total_bytes=memory[1] if memory else None,
            power_watts=power,
            energy_joules=energy,
            processes=processes,
            gpm=gpm.reading if gpm is not None else None,
        )

    def _read_gpm(self, dev: _Device, errors: Counter[str], now: float) -> GpmResult | None:
        """SM, tensor and DRAM activity through GPM where the GPU has it (nvml_gpm.py)."""
        if dev.gpm_target is None or dev.mig_enabled:
            return None  # a MIG parent's activity is its instances'
        nvml = self._nvml
        try:
            return self._gpm.read(nvml, dev.gpm, dev.gpm_target, errors, now)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            raise DeviceLost(_reason(exc)) from None

    def _memory(self, dev: _Device, errors: Counter[str]) -> tuple[int, int] | None:
        nvml = self._nvml
        info = None
        if "memory_v2" not in dev.unsupported:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(dev.handle, version=nvml.nvmlMemory_v2)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, TypeError):
                dev.unsupported.add("memory_v2")  # driver older than 510.39: v1 counts reserved as used
            except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
                raise DeviceLost(_reason(exc)) from None
            except nvml.NVMLError as exc:
                errors[_reason(exc)] += 1
                return None
        if info is None:
            info = self._call(dev, "nvmlDeviceGetMemoryInfo", errors)
        if info is None:
            return None
        return int(info.used), int(info.total)

    def _activity(self, dev: _Device, errors: Counter[str], now: float) -> tuple[float | None, float, float | None]:
        """Busy and covered seconds since the last read of the driver's sample buffer, and the utilization."""
        nvml = self._nvml
        if "nvmlDeviceGetSamples" not in dev.unsupported:
            if dev.last_seen_us is not None and not _due(dev.samples_read_at, self._samples_period(dev), now):
                # Between buffer reads: the samples wait in the buffer and are counted at the next read.
                return 0.0, 0.0, dev.last_utilization
            dev.samples_read_at = now
            # Until the buffer is known to hold twice the read period, read it whole (the same cost):
            # how far back it reaches sets how long reads may be apart. Samples already counted are
            # skipped by their timestamps.
            whole = dev.buffer_span_seconds is None or dev.buffer_span_seconds < 2 * SAMPLES_READ_SECONDS
            try:
                value_type, samples = nvml.nvmlDeviceGetSamples(
                    dev.handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, 0 if whole else dev.last_seen_us or 0
                )
            except nvml.NVMLError_NotFound:
                return 0.0, 0.0, dev.last_utilization  # no new samples since the last poll
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
                dev.unsupported.add("nvmlDeviceGetSamples")
                log.info("%s: no utilization sample buffer; falling back to point readings", dev.identity.device)
            except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
                raise DeviceLost(_reason(exc)) from None
            except nvml.NVMLError as exc:
                errors[_reason(exc)] += 1
                return 0.0, 0.0, dev.last_utilization  # samples stay in the buffer for the next poll
            else:
                return self._integrate(
                    dev, value_type, samples, errors, None if dev.last_poll is None else now - dev.last_poll, whole
                )
        return self._point(dev, errors, now)

    def _integrate(
        self,
        dev: _Device,
        value_type: int,
        samples: list[Any],
        errors: Counter[str],
        since_last_poll: float | None,
        whole: bool,
    ) -> tuple[float | None, float, float | None]:
        attr = _VALUE_FIELDS.get(int(value_type), "uiVal")
        points = sorted((int(s.timeStamp), float(getattr(s.sampleValue, attr))) for s in samples)
        if not points:  # an empty answer instead of NVML_ERROR_NOT_FOUND: nothing new either
            return 0.0, 0.0, dev.last_utilization
        span = (points[-1][0] - points[0][0]) / 1e6
        if whole:
            dev.buffer_span_seconds = max(dev.buffer_span_seconds or 0.0, span)
        if dev.last_seen_us is None:
            if since_last_poll is None:
                # The very first poll: nothing to account yet; start from the newest sample, which
                # the gauge shows until the next read (history from before we started is not ours
                # to average: on a real H200 it held the blips of the driver's own start).
                dev.last_seen_us = points[-1][0]
                dev.last_utilization = min(1.0, max(0.0, points[-1][1] / 100.0))
                return 0.0, 0.0, dev.last_utilization
            # First samples after a poll that had none (driver just started, GPU back from a loss):
            # take the buffer back to the previous poll, measured on the driver's own clock.
            dev.last_seen_us = points[-1][0] - int(since_last_poll * 1_000_000)
        gaps = [b[0] - a[0] for a, b in pairwise(points) if b[0] > a[0]]
        if gaps:
            period = min(gaps)
            dev.sample_period_us = period if dev.sample_period_us is None else min(dev.sample_period_us, period)
        period_us = dev.sample_period_us
        busy = covered = 0.0
        previous = dev.last_seen_us
        for ts, value in points:
            if ts <= previous:
                continue
            gap = (ts - previous) / 1e6
            level = min(1.0, max(0.0, value / 100.0))
            if period_us is not None and ts - previous > 2 * period_us:
                # The ring buffer overflowed: samples between `previous` and this one are gone.
                # Count the gap at this sample's level and say so in the self-metrics. What came
                # back is all the buffer holds: read it at least twice as often from now on.
                errors["samples_lost"] += 1
                dev.buffer_span_seconds = span
            busy += gap * level
            covered += gap
            previous = ts
        dev.last_seen_us = previous
        utilization = busy / covered if covered > 0 else dev.last_utilization
        dev.last_utilization = utilization
        return busy, covered, utilization

    @staticmethod
    def _samples_period(dev: _Device) -> float:
        """Seconds between buffer reads: at most SAMPLES_READ_SECONDS, and half what the buffer holds."""
        if dev.buffer_span_seconds is None:
            return 0.0
        return min(SAMPLES_READ_SECONDS, dev.buffer_span_seconds / 2)

    def _point(self, dev: _Device, errors: Counter[str], now: float) -> tuple[float | None, float, float | None]:
        rates = self._call(dev, "nvmlDeviceGetUtilizationRates", errors)
        if rates is None:
            return None, 0.0, None
        level = min(1.0, int(rates.gpu) / 100.0)
        dt = now - dev.last_poll if dev.last_poll is not None else 0.0
        dev.last_utilization = level
        return level * dt, dt, level

    def _processes(
        self, dev: _Device, errors: Counter[str], facts: dict[int, ProcessFacts | None]
    ) -> tuple[ProcessReading, ...]:
        memory_by_pid: dict[int, int | None] = {}
        for kind in ("Compute", "Graphics"):
            listed = None
            for version in ("_v3", "_v2"):
                name = f"nvmlDeviceGet{kind}RunningProcesses{version}"
                if name in dev.unsupported or not hasattr(self._nvml, name):
                    continue
                listed = self._call(dev, name, errors)
                if listed is not None:
                    break
            for proc in listed or ():
                pid = int(proc.pid)
                used = proc.usedGpuMemory
                used_int = int(used) if used is not None else None
                previous = memory_by_pid.get(pid)
                memory_by_pid[pid] = used_int if previous is None else max(previous, used_int or 0)
        out = []
        for pid, used in sorted(memory_by_pid.items()):
            if pid not in facts:
                # None when NVML lists it but /proc does not: a container without hostPID, or it just exited.
                facts[pid] = self._proc.facts(pid)
            out.append(process_reading(pid, used, facts[pid]))
        return tuple(out)

    def _event_device(self, handle: Any) -> _Device | None:
        """The device an event came from: by UUID, or by handle when the GPU no longer answers.

        XID 79 (fallen off the bus) arrives exactly when nvmlDeviceGetUUID starts failing; the
        event must still be counted on its device.
        """
        try:
            return self._by_uuid.get(_text(self._nvml.nvmlDeviceGetUUID(handle)))
        except self._nvml.NVMLError:
            key = _handle_key(handle)
            return next((d for d in self._devices if d.handle is not None and _handle_key(d.handle) == key), None)

    def _drain_events(self, errors: Counter[str]) -> dict[str, tuple[CounterDelta, ...]]:
        nvml = self._nvml
        if self._event_set is None:
            return {}
        found: dict[str, list[CounterDelta]] = {}
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                event = nvml.nvmlEventSetWait_v2(self._event_set, 0)
            except nvml.NVMLError_Timeout:
                break
            except nvml.NVMLError as exc:
                errors[_reason(exc)] += 1
                break
            dev = self._event_device(event.device)
            if dev is None:
                errors["xid_unknown_device"] += 1
                continue
            xid = str(int(event.eventData))
            log.warning("XID %s on %s (%s)", xid, dev.identity.device, dev.identity.uuid)
            found.setdefault(dev.identity.device, []).append(
                CounterDelta("accel_nvidia_xid_errors_total", (("xid", xid),), 1.0)
            )
        return {k: tuple(v) for k, v in found.items()}


def _due(last_read: float | None, period: float, now: float) -> bool:
    """Whether a read done every `period` seconds, last at `last_read`, is due at `now`."""
    return last_read is None or now - last_read >= period * DUE_SHARE


def _handle_key(handle: Any) -> object:
    """A comparable identity for an NVML handle: the address of a ctypes pointer, else the handle."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return handle


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else name


def _hint(reason: str) -> str:
    hints = {
        "LibraryNotFound": "libnvidia-ml.so.1 could not be loaded: install the NVIDIA driver, or run the container with the NVIDIA runtime and NVIDIA_DRIVER_CAPABILITIES=utility.",
        "DriverNotLoaded": "The NVIDIA kernel module is not loaded.",
        "LibRmVersionMismatch": "The driver was upgraded without reloading the kernel module: reboot or reload it.",
        "NoPermission": "No access to /dev/nvidia*: check DeviceAllow= in the unit or the container's device list.",
        "ModuleNotFoundError": "Install nvidia-ml-py.",
        "ImportError": "Install nvidia-ml-py (and uninstall the deprecated 'pynvml' package).",
    }
    return hints.get(reason, "")
