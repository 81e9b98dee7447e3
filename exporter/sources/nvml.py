"""The NVIDIA source: every GPU and MIG instance through NVML (the `pynvml` API).

NVML calls block, so every call runs on one dedicated worker thread. The module is injected:
production passes the real `pynvml` from nvidia-ml-py, the simulator passes its fake, and the
code below cannot tell them apart. Which devices there are is nvml_inventory.py's job; the
sample-buffer and energy arithmetic are pure functions in nvml_integrate.py; GPM is nvml_gpm.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from exporter.clock import Clock
from exporter.readings import CounterDelta, DeviceReading, ProcessReading, SourceReport
from exporter.sources.nvml_gpm import GpmResult, GpmSampler
from exporter.sources.nvml_integrate import (
    ENERGY_READ_SECONDS,
    SAMPLES_READ_SECONDS,
    Activity,
    due,
    energy_due,
    integrate,
    joules,
    point_activity,
    read_whole_buffer,
    sample_points,
    samples_period,
    unchanged,
    watts,
)
from exporter.sources.nvml_inventory import DeviceLost, Inventory, NvmlDevice, reason
from exporter.sources.procfs import ProcessFacts, ProcessFactsReader, process_reading
from exporter.workers import SerialDaemonExecutor

__all__ = ["ENERGY_READ_SECONDS", "SAMPLES_READ_SECONDS", "NvmlSource", "load_pynvml"]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_POLL = 256
NO_DRIVER_REASONS = frozenset({"LibraryNotFound", "DriverNotLoaded", "ImportError", "ModuleNotFoundError"})
REINIT_AFTER_POLLS = 3  # every GPU lost this many polls in a row: re-initialise NVML


def load_pynvml() -> Any:
    """Import NVIDIA's binding and check it is the real one (not a foreign `pynvml.py`)."""
    import pynvml

    if not hasattr(pynvml, "nvmlInitWithFlags") or not hasattr(pynvml, "_nvmlGetFunctionPointer"):
        raise ImportError(
            "the installed 'pynvml' module is not NVIDIA's nvidia-ml-py; uninstall 'pynvml' and install 'nvidia-ml-py'"
        )
    return pynvml


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
        self._inventory = Inventory(clock)
        self._initialised = False
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._retry_delay = retry_initial
        self._next_init = 0.0
        self._init_problem = ""
        # True while NVML cannot even load: no NVIDIA driver or binding on this host.
        self.no_driver = False
        # Errors of the first initialisation, reported with the first poll.
        self._start_errors: Counter[str] = Counter()
        self._all_lost_polls = 0
        self._reinit_delay = retry_initial
        self._gpm = GpmSampler(clock)

    @property
    def _devices(self) -> list[NvmlDevice]:
        """The devices in enumeration order (the inventory's list, not a copy)."""
        return self._inventory.devices

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
            why = reason(exc)
            self.no_driver = why in NO_DRIVER_REASONS
            errors[why] += 1
            problem = f"{why}: {exc}"
            if problem != self._init_problem:
                log.error(
                    "NVML unavailable (%s); GPU metrics are off, retrying with backoff up to %.0fs. %s",
                    problem,
                    self._retry_max,
                    _hint(why),
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
            self._inventory.enumerate(self._nvml)
        except Exception as exc:
            errors[reason(exc)] += 1
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
        self._inventory.forget_events()

    # --- polling (worker thread) ---------------------------------------------------------------
    def _poll_sync(self) -> SourceReport:
        started = self._clock.monotonic()
        errors: Counter[str] = self._start_errors
        self._start_errors = Counter()
        self._try_init(errors)
        if not self._initialised:
            readings = tuple(DeviceReading(identity=i, up=False) for i in self._inventory.known)
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
            self._inventory.reidentify(self._nvml)
        else:
            for gone in self._inventory.refresh(self._nvml):
                self._gpm.free(self._nvml, gone.gpm)  # a destroyed MIG instance or unplugged GPU
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
                dev.samples = replace(dev.samples, last_seen_us=None)  # history after a loss is not trustworthy
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

    def _call(self, dev: NvmlDevice, name: str, errors: Counter[str], *args: Any, **kwargs: Any) -> Any:
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
            raise DeviceLost(reason(exc)) from None
        except nvml.NVMLError as exc:
            errors[reason(exc)] += 1
            return None
        except UnicodeDecodeError:
            errors["Unknown"] += 1
            return None

    def _read(self, dev: NvmlDevice, errors: Counter[str], facts: dict[int, ProcessFacts | None]) -> DeviceReading:
        if dev.unreadable:
            raise DeviceLost(dev.unreadable)
        now = self._clock.monotonic()
        memory = self._memory(dev, errors)
        busy: float | None = None
        covered = 0.0
        utilization: float | None = None
        power = energy = None
        if not dev.is_mig:  # power and energy are device-wide: read on the physical GPU
            power = watts(self._call(dev, "nvmlDeviceGetPowerUsage", errors))
            if energy_due(dev.energy_read_at, now):
                dev.energy_read_at = now
                energy = joules(self._call(dev, "nvmlDeviceGetTotalEnergyConsumption", errors))
        processes = () if dev.mig_enabled else self._processes(dev, errors, facts)
        if not dev.is_mig and not dev.mig_enabled:
            # A GPU in MIG mode reports no activity of its own; its instances have none through NVML.
            # Read last: it consumes samples from the buffer, and a failure in any read above must
            # leave them there for the next poll.
            activity = self._activity(dev, errors, now)
            busy, covered, utilization = activity.busy_seconds, activity.covered_seconds, activity.utilization
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

    def _read_gpm(self, dev: NvmlDevice, errors: Counter[str], now: float) -> GpmResult | None:
        """SM, tensor and DRAM activity through GPM where the GPU has it (nvml_gpm.py)."""
        if dev.gpm_target is None or dev.mig_enabled:
            return None  # a MIG parent's activity is its instances'
        nvml = self._nvml
        try:
            return self._gpm.read(nvml, dev.gpm, dev.gpm_target, errors, now)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            raise DeviceLost(reason(exc)) from None

    def _memory(self, dev: NvmlDevice, errors: Counter[str]) -> tuple[int, int] | None:
        nvml = self._nvml
        info = None
        if "memory_v2" not in dev.unsupported:
            try:
                info = nvml.nvmlDeviceGetMemoryInfo(dev.handle, version=nvml.nvmlMemory_v2)
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, TypeError):
                dev.unsupported.add("memory_v2")  # driver older than 510.39: v1 counts reserved as used
            except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
                raise DeviceLost(reason(exc)) from None
            except nvml.NVMLError as exc:
                errors[reason(exc)] += 1
                return None
        if info is None:
            info = self._call(dev, "nvmlDeviceGetMemoryInfo", errors)
        if info is None:
            return None
        return int(info.used), int(info.total)

    def _activity(self, dev: NvmlDevice, errors: Counter[str], now: float) -> Activity:
        """Busy and covered seconds since the last read of the driver's sample buffer, and the utilization."""
        nvml = self._nvml
        if "nvmlDeviceGetSamples" not in dev.unsupported:
            if dev.samples.last_seen_us is not None and not due(dev.samples_read_at, samples_period(dev.samples), now):
                # Between buffer reads: the samples wait in the buffer and are counted at the next read.
                return unchanged(dev.samples)
            dev.samples_read_at = now
            whole = read_whole_buffer(dev.samples)
            try:
                value_type, samples = nvml.nvmlDeviceGetSamples(
                    dev.handle, nvml.NVML_GPU_UTILIZATION_SAMPLES, 0 if whole else dev.samples.last_seen_us or 0
                )
            except nvml.NVMLError_NotFound:
                return unchanged(dev.samples)  # no new samples since the last poll
            except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
                dev.unsupported.add("nvmlDeviceGetSamples")
                log.info("%s: no utilization sample buffer; falling back to point readings", dev.identity.device)
            except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
                raise DeviceLost(reason(exc)) from None
            except nvml.NVMLError as exc:
                errors[reason(exc)] += 1
                return unchanged(dev.samples)  # samples stay in the buffer for the next poll
            else:
                since = None if dev.last_poll is None else now - dev.last_poll
                result = integrate(dev.samples, sample_points(value_type, samples), since, whole)
                dev.samples = result.cursor
                if result.samples_lost:
                    errors["samples_lost"] += result.samples_lost
                return result.activity
        rates = self._call(dev, "nvmlDeviceGetUtilizationRates", errors)
        if rates is None:
            return Activity(None, 0.0, None)
        activity = point_activity(int(rates.gpu), dev.last_poll, now)
        dev.samples = replace(dev.samples, last_utilization=activity.utilization)
        return activity

    def _processes(
        self, dev: NvmlDevice, errors: Counter[str], facts: dict[int, ProcessFacts | None]
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

    def _drain_events(self, errors: Counter[str]) -> dict[str, tuple[CounterDelta, ...]]:
        nvml = self._nvml
        event_set = self._inventory.event_set
        if event_set is None:
            return {}
        found: dict[str, list[CounterDelta]] = {}
        for _ in range(MAX_EVENTS_PER_POLL):
            try:
                event = nvml.nvmlEventSetWait_v2(event_set, 0)
            except nvml.NVMLError_Timeout:
                break
            except nvml.NVMLError as exc:
                errors[reason(exc)] += 1
                break
            dev = self._inventory.device_for_event(nvml, event.device)
            if dev is None:
                errors["xid_unknown_device"] += 1
                continue
            xid = str(int(event.eventData))
            log.warning("XID %s on %s (%s)", xid, dev.identity.device, dev.identity.uuid)
            found.setdefault(dev.identity.device, []).append(
                CounterDelta("accel_nvidia_xid_errors_total", (("xid", xid),), 1.0)
            )
        return {k: tuple(v) for k, v in found.items()}


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
