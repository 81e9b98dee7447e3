"""The NVML source's inventory: which GPUs and MIG instances there are, and how that changes.

Enumeration (a GPU dead at start becomes one unreadable row instead of hiding the others), the
MIG layout (each instance's share of its parent's slices), the periodic re-enumeration that
finds new MIG layouts and hot-plugged GPUs, the retry for GPUs that could not be identified, and
the XID event registration that goes with each physical GPU. Everything here runs on the NVML
worker thread; `nvml` is the injected binding (real or simulated).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from typing import Any

from exporter.clock import Clock
from exporter.readings import DeviceIdentity
from exporter.sources.nvml_gpm import GpmState, GpmTarget
from exporter.sources.nvml_integrate import SampleCursor

log = logging.getLogger(__name__)

MIG_SLICES_DEFAULT = 7  # A100, H100, H200, B200 have 7 compute slices
MIG_SLICES_BY_MODEL = {"A30": 4}
INVENTORY_SECONDS = 60.0  # how often MIG layouts and hot-plugged GPUs are looked for


class DeviceLost(Exception):
    """The device stopped answering (GpuIsLost, or Unknown, which usually means a dying GPU)."""


@dataclass
class NvmlDevice:
    """Mutable per-device driver state; it lives only inside the NVML worker thread."""

    handle: Any
    identity: DeviceIdentity
    is_mig: bool = False
    mig_enabled: bool = False
    slices: int = 0  # compute slices of a MIG instance
    samples: SampleCursor = field(default_factory=SampleCursor)
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
    gpm_target: GpmTarget | None = None  # None: not sampled (a MIG parent, an unreadable GPU)
    gpm: GpmState = field(default_factory=GpmState)


class Inventory:
    """The devices NVML shows, in enumeration order, with a lookup by UUID and the XID event set."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.devices: list[NvmlDevice] = []
        self._by_uuid: dict[str, NvmlDevice] = {}
        # The identities last enumerated: shown as down while NVML cannot even initialise.
        self.known: tuple[DeviceIdentity, ...] = ()
        self.event_set: Any = None
        self._driver = ""
        self._next_refresh = 0.0

    def enumerate(self, nvml: Any) -> None:
        """Enumerate every GPU and MIG instance afresh and register for XID events; raises NVMLError."""
        self._driver = text(nvml.nvmlSystemGetDriverVersion())
        devices: list[NvmlDevice] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            devices.extend(self._identify(nvml, index))
        self._set(devices)
        self._register_events(nvml)
        self._next_refresh = self._clock.monotonic() + INVENTORY_SECONDS

    def forget_events(self) -> None:
        """The NVML session ended: its event set is gone with it."""
        self.event_set = None

    def refresh(self, nvml: Any) -> list[NvmlDevice]:
        """Every INVENTORY_SECONDS, enumerate again: MIG instances are created and destroyed, GPUs hot-plugged.

        Devices that did not change keep their state (sample timestamps, cached unsupported
        calls). Returns the devices that are gone, whose resources the caller frees.
        """
        now = self._clock.monotonic()
        if now < self._next_refresh or any(d.lost for d in self.devices):
            return []  # while a GPU is lost, its recovery is handled per device
        self._next_refresh = now + INVENTORY_SECONDS
        try:
            fresh = [d for index in range(nvml.nvmlDeviceGetCount()) for d in self._identify(nvml, index)]
        except nvml.NVMLError as exc:
            log.debug("inventory refresh failed: %s", exc)
            return []
        if any(d.unreadable for d in fresh):
            return []  # a GPU stopped answering: that is handled as a loss, not as a new layout
        previous = {d.identity.uuid: d for d in self.devices}
        merged = []
        for dev in fresh:
            kept = previous.get(dev.identity.uuid)
            merged.append(kept if kept is not None and kept.identity == dev.identity else dev)
        if [d.identity for d in merged] == [d.identity for d in self.devices]:
            return []
        added = sorted({d.identity.device for d in merged} - {d.identity.device for d in self.devices})
        gone = sorted({d.identity.device for d in self.devices} - {d.identity.device for d in merged})
        log.info("device inventory changed: added %s, gone %s", ", ".join(added) or "none", ", ".join(gone) or "none")
        for dev in merged:
            if dev not in self.devices and not dev.is_mig:
                self._register(nvml, dev)
        removed = [dev for dev in self.devices if dev not in merged]  # a destroyed MIG instance or unplugged GPU
        self._set(merged)
        return removed

    def reidentify(self, nvml: Any) -> None:
        """Try again to identify GPUs that were dead at enumeration; a GPU that comes back is found."""
        devices: list[NvmlDevice] = []
        found = False
        for dev in self.devices:
            if not dev.unreadable:
                devices.append(dev)
                continue
            try:
                replacement = self._identify(nvml, dev.index)
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
                self._register(nvml, replacement[0])
                devices.extend(replacement)
            else:
                devices.append(dev)
        if found:
            self._set(devices)

    def device_for_event(self, nvml: Any, handle: Any) -> NvmlDevice | None:
        """The device an event came from: by UUID, or by handle when the GPU no longer answers.

        XID 79 (fallen off the bus) arrives exactly when nvmlDeviceGetUUID starts failing; the
        event must still be counted on its device.
        """
        try:
            return self._by_uuid.get(text(nvml.nvmlDeviceGetUUID(handle)))
        except nvml.NVMLError:
            key = handle_key(handle)
            return next((d for d in self.devices if d.handle is not None and handle_key(d.handle) == key), None)

    def _set(self, devices: list[NvmlDevice]) -> None:
        self.devices = devices
        self._by_uuid = {d.identity.uuid: d for d in devices if d.identity.uuid}
        self.known = tuple(d.identity for d in devices)

    def _identify(self, nvml: Any, index: int) -> list[NvmlDevice]:
        """The GPU at `index` and its MIG instances; a dead GPU becomes one unreadable row."""
        driver = self._driver
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = text(nvml.nvmlDeviceGetUUID(handle))
            model = text(nvml.nvmlDeviceGetName(handle))
            try:
                minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
            except nvml.NVMLError:
                minor = index  # Windows and some containers: fall back to the enumeration index
            name = f"nvidia{minor}"
            total_slices, migs = _mig_children(nvml, handle, name, model, driver)
        except (nvml.NVMLError_GpuIsLost, nvml.NVMLError_Unknown) as exc:
            # One dead GPU (fallen off the bus before we started) must not hide the others. Other
            # errors may be transient: they fail the enumeration, which is retried as a whole.
            log.error("GPU at index %d cannot be identified (%s); it shows as nvidia%d, down", index, exc, index)
            identity = DeviceIdentity(f"nvidia{index}", "", "nvidia", "", "gpu", "", driver)
            return [NvmlDevice(None, identity, lost=True, unreadable=reason(exc), index=index)]
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
        gpu = NvmlDevice(handle, identity, mig_enabled=bool(migs), index=index, gpm_target=GpmTarget(name, handle))
        return [gpu, *migs]

    def _register_events(self, nvml: Any) -> None:
        try:
            self.event_set = nvml.nvmlEventSetCreate()
            for dev in self.devices:
                if not dev.is_mig and not dev.unreadable:
                    self._register(nvml, dev)
        except (nvml.NVMLError, AttributeError) as exc:
            log.info("XID events unavailable: %s", exc)
            self.event_set = None

    def _register(self, nvml: Any, dev: NvmlDevice) -> None:
        """XID events of one physical GPU into the event set (when there is one)."""
        if self.event_set is None:
            return
        try:
            nvml.nvmlDeviceRegisterEvents(dev.handle, nvml.nvmlEventTypeXidCriticalError, self.event_set)
        except nvml.NVMLError as exc:
            log.debug("XID events not available on %s: %s", dev.identity.device, exc)


def _mig_children(nvml: Any, handle: Any, parent: str, model: str, driver: str) -> tuple[int, list[NvmlDevice]]:
    """The GPU's compute slice count and its MIG instances (none when MIG is off)."""
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
            uuid=text(nvml.nvmlDeviceGetUUID(mig)),
            vendor="nvidia",
            model=text(nvml.nvmlDeviceGetName(mig)),
            kind="mig",
            parent=parent,
            driver_version=driver,
            physical=False,
            price_units=min(slices, total_slices) / total_slices,
        )
        target = GpmTarget(identity.device, handle, gi)  # sampled through the parent GPU's handle
        children.append(NvmlDevice(mig, identity, is_mig=True, slices=min(slices, total_slices), gpm_target=target))
    return total_slices, children


def handle_key(handle: Any) -> object:
    """A comparable identity for an NVML handle: the address of a ctypes pointer, else the handle."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return handle


def text(value: Any) -> str:
    """An NVML string (bytes from older bindings) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def reason(exc: BaseException) -> str:
    """The error label for an exception: `NVMLError_GpuIsLost` -> `GpuIsLost`, others by class name."""
    name = type(exc).__name__
    return name.removeprefix("NVMLError_") if name.startswith("NVMLError_") else name
