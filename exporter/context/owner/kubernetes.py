"""Kubernetes pod attribution: which pod, namespace and container holds each accelerator.

Two node-local sources, no API server and no service-account token:

1. The kubelet's **pod-resources API v1** (gRPC on the unix socket
   `/var/lib/kubelet/pod-resources/kubelet.sock`) lists the devices each container was given by
   a device plugin. NVIDIA ids are GPU or MIG UUIDs (`GPU-…`, `MIG-…`; time-slicing replicas
   append `::<n>`); `aws.amazon.com/neuroncore` ids are NeuronCore indices and
   `aws.amazon.com/neuron` (or `neurondevice`) ids are Neuron device indices. The socket is
   owned by root, mode 0755: connecting needs uid 0 (no capability).
2. The kubelet's **log directories**, for processes on devices that no device plugin assigned
   (shared GPUs, or `NVIDIA_VISIBLE_DEVICES=all` pods): a process's cgroup names its pod UID and
   container ID (see `exporter.context.owner.cgroup`), and the kubelet names its log directories
   `/var/log/pods/<namespace>_<pod>_<uid>/` and `/var/log/containers/<pod>_<namespace>_<container>-<id>.log`.
   Only directory listings are read, never the logs.

`PodResourcesWatcher` refreshes both on a timer (default 30 s) in a worker thread, because
grpc's client blocks, and never per scrape. Readers take `watcher.assignments`: an immutable
`PodAssignments` snapshot that is swapped whole. Outside Kubernetes (no socket, no log
directories) the watcher says so once in the log and keeps serving the empty snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from exporter.context.owner.cgroup import CgroupFacts
from exporter.readings import DeviceIdentity

if TYPE_CHECKING:
    from exporter.context.podresources import api_pb2

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
DEFAULT_POD_LOG_DIR = Path("/var/log/pods")
DEFAULT_CONTAINER_LOG_DIR = Path("/var/log/containers")
DEFAULT_REFRESH_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 5.0
# The kubelet caps pod-resources answers at 16 MiB; grpc's client default (4 MiB) is too small
# for a node with hundreds of pods.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
LIST_METHOD = "/v1.PodResourcesLister/List"

NVIDIA_RESOURCE_PREFIX = "nvidia.com/"  # nvidia.com/gpu, nvidia.com/mig-1g.10gb, nvidia.com/gpu.shared
NEURONCORE_RESOURCE = "aws.amazon.com/neuroncore"
NEURON_DEVICE_RESOURCES = frozenset({"aws.amazon.com/neuron", "aws.amazon.com/neurondevice"})

_CONTAINER_LOG_RE = re.compile(r"^([a-z0-9.-]+)_([a-z0-9-]+)_(.+)-([0-9a-f]{64})\.log$")


@dataclass(frozen=True, order=True)
class PodRef:
    """A pod (and, where known, one of its containers). Empty strings mean unknown."""

    namespace: str
    pod: str
    container: str = ""
    uid: str = ""


def gpu_key(device_id: str) -> str:
    """The lookup key of an NVIDIA GPU or MIG device: its UUID, without a time-slicing `::<n>` suffix."""
    return device_id.split("::", 1)[0]


def neuroncore_key(core: int) -> str:
    """The lookup key of NeuronCore `core` (indices alone would collide with Neuron device indices)."""
    return f"neuroncore:{core}"


def neuron_device_key(device: int) -> str:
    """The lookup key of Neuron device `device` (`/dev/neuron<device>`)."""
    return f"neuron:{device}"


@dataclass(frozen=True, eq=False)
class PodAssignments:
    """One immutable view of the node's pods, as of `taken_at` (Unix time; 0 when never refreshed).

    - `by_device_id`: device key (`gpu_key`, `neuroncore_key`, `neuron_device_key`) to the
      containers the kubelet assigned it to (several when a GPU is time-sliced), sorted;
    - `by_pod_uid`: pod UID to its pod (container "");
    - `by_container_id`: 64-hex container ID to its container.
    """

    by_device_id: Mapping[str, tuple[PodRef, ...]] = field(default_factory=lambda: MappingProxyType({}))
    by_pod_uid: Mapping[str, PodRef] = field(default_factory=lambda: MappingProxyType({}))
    by_container_id: Mapping[str, PodRef] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: float = 0.0

    def for_gpu(self, uuid: str) -> tuple[PodRef, ...]:
        """Containers assigned the GPU or MIG device with this UUID; () when none."""
        return self.by_device_id.get(gpu_key(uuid), ())

    def for_neuroncore(self, core: int | None, device: int | None = None) -> tuple[PodRef, ...]:
        """Containers assigned NeuronCore `core` (`aws.amazon.com/neuroncore`), else its Neuron device `device`.

        A pod that asked for whole devices (`aws.amazon.com/neuron`) holds every core on them, so
        a core with no direct assignment falls back to the device it sits on; None skips a step.
        """
        if core is not None:
            direct = self.by_device_id.get(neuroncore_key(core), ())
            if direct:
                return direct
        if device is None:
            return ()
        return self.by_device_id.get(neuron_device_key(device), ())

    def for_cgroup(self, facts: CgroupFacts) -> PodRef | None:
        """The pod (with its container when known) that a process's cgroup facts point to; None outside pods."""
        if facts.container_id:
            ref = self.by_container_id.get(facts.container_id)
            if ref is not None:
                return ref
        if facts.pod_uid:
            return self.by_pod_uid.get(facts.pod_uid)
        return None


EMPTY = PodAssignments()


def device_assignments(response: api_pb2.ListPodResourcesResponse) -> dict[str, tuple[PodRef, ...]]:
    """Map device keys to containers from a pod-resources List answer; other resources are ignored."""
    found: dict[str, set[PodRef]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            ref = PodRef(namespace=pod.namespace, pod=pod.name, container=container.name)
            for devices in container.devices:
                for key in _device_keys(devices.resource_name, devices.device_ids):
                    found.setdefault(key, set()).add(ref)
    return {key: tuple(sorted(refs)) for key, refs in found.items()}


def _device_keys(resource: str, device_ids: Iterable[str]) -> list[str]:
    if resource.startswith(NVIDIA_RESOURCE_PREFIX):
        return [gpu_key(device_id) for device_id in device_ids]
    if resource == NEURONCORE_RESOURCE:
        return [neuroncore_key(index) for index in map(_index, device_ids) if index is not None]
    if resource in NEURON_DEVICE_RESOURCES:
        return [neuron_device_key(index) for index in map(_index, device_ids) if index is not None]
    return []


def _index(text: str) -> int | None:
    """A non-negative decimal index, or None. str.isdigit alone also accepts '²', which int() rejects."""
    return int(text) if text.isascii() and text.isdigit() else None


def scan_pod_log_dir(pod_log_dir: Path) -> dict[str, PodRef]:
    """Pod UID -> pod from `/var/log/pods/<namespace>_<pod>_<uid>` names; {} when the directory is absent."""
    pods: dict[str, PodRef] = {}
    for name in _list_dir(pod_log_dir):
        parts = name.split("_")
        # Namespaces and pod names are DNS labels/subdomains: they cannot contain '_'.
        if len(parts) == 3 and all(parts):
            namespace, pod, uid = parts
            pods[uid] = PodRef(namespace=namespace, pod=pod, uid=uid)
    return pods


def scan_container_log_dir(container_log_dir: Path, pods_by_uid: Mapping[str, PodRef]) -> dict[str, PodRef]:
    """Container ID -> container from `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` names."""
    by_name = {(ref.namespace, ref.pod): ref.uid for ref in pods_by_uid.values()}
    containers: dict[str, PodRef] = {}
    for name in _list_dir(container_log_dir):
        match = _CONTAINER_LOG_RE.match(name)
        if match:
            pod, namespace, container, container_id = match.groups()
            uid = by_name.get((namespace, pod), "")
            containers[container_id] = PodRef(namespace=namespace, pod=pod, container=container, uid=uid)
    return containers


def _list_dir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class PodResourcesError(Exception):
    """The kubelet's pod-resources API did not answer usably; the message says what failed."""


def list_pod_resources(socket_path: Path, timeout: float) -> api_pb2.ListPodResourcesResponse:
    """Call the kubelet's `v1.PodResourcesLister/List` once (blocking); raise PodResourcesError on failure."""
    try:  # imported here: nodes outside Kubernetes never load grpc
        import grpc
        from google.protobuf.message import DecodeError

        from exporter.context.podresources import api_pb2
    except ImportError as exc:
        raise PodResourcesError(
            f"pod attribution needs grpcio and protobuf: pip install 'accel-cost-exporter[kubernetes]' ({exc})"
        ) from None

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    try:
        with grpc.insecure_channel(f"unix://{socket_path}", options=options) as channel:
            call = channel.unary_unary(
                LIST_METHOD,
                request_serializer=api_pb2.ListPodResourcesRequest.SerializeToString,
                response_deserializer=api_pb2.ListPodResourcesResponse.FromString,
            )
            response: api_pb2.ListPodResourcesResponse = call(api_pb2.ListPodResourcesRequest(), timeout=timeout)
            return response
    except grpc.RpcError as exc:
        reason = _describe(exc)
        if "permission denied" in reason.lower():
            reason += " (the socket is root-only: run the exporter as uid 0, without capabilities)"
        raise PodResourcesError(f"kubelet pod-resources List on {socket_path} failed: {reason}") from None
    except DecodeError as exc:
        raise PodResourcesError(f"kubelet pod-resources List on {socket_path}: undecodable answer: {exc}") from None


class PodResourcesWatcher:
    """Keeps `assignments` fresh from the kubelet; start `run()` as a task, read `assignments` anywhere.

    A failed refresh keeps the previous device map (pods rarely move in 30 s) and records the
    error in `last_error`; `last_success` is the Unix time of the last good kubelet answer.
    """

    def __init__(
        self,
        socket_path: Path = DEFAULT_SOCKET,
        *,
        pod_log_dir: Path = DEFAULT_POD_LOG_DIR,
        container_log_dir: Path = DEFAULT_CONTAINER_LOG_DIR,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._socket_path = socket_path
        self._pod_log_dir = pod_log_dir
        self._container_log_dir = container_log_dir
        self._refresh_seconds = refresh_seconds
        self._timeout_seconds = timeout_seconds
        self._assignments = EMPTY
        self._reported_state: str = ""
        self.last_error: str = ""
        self.last_success: float = 0.0

    @property
    def assignments(self) -> PodAssignments:
        """The latest snapshot (EMPTY before the first refresh or outside Kubernetes)."""
        return self._assignments

    @property
    def enabled(self) -> bool:
        """Whether the kubelet socket or its pod log directory exists on this node right now; never raises.

        os.path, not Path: on Python 3.10/3.11 Path.exists() raises PermissionError when a parent
        cannot be searched (e.g. a systemd DynamicUser and a root-only /var/lib/kubelet).
        """
        return os.path.exists(self._socket_path) or os.path.isdir(self._pod_log_dir)

    def refresh(self) -> PodAssignments:
        """Refresh the snapshot now (blocking: run it in a thread) and return it; never raises."""
        pods_by_uid = scan_pod_log_dir(self._pod_log_dir)
        containers = scan_container_log_dir(self._container_log_dir, pods_by_uid)
        devices = self._assignments.by_device_id
        if os.path.exists(self._socket_path):  # False, not PermissionError, under an unsearchable parent
            try:
                devices = device_assignments(list_pod_resources(self._socket_path, self._timeout_seconds))
            except PodResourcesError as exc:  # keep the old map: pods rarely move between two refreshes
                self.last_error = str(exc)
                self._report("error", self.last_error, logging.WARNING)
            else:
                self.last_error = ""
                self.last_success = time.time()
                self._report("ok", f"pod attribution on: reading {self._socket_path}", logging.INFO)
        else:
            devices = {}
            self._report(
                "absent",
                f"pod attribution by device off: {self._socket_path} not found (not a Kubernetes node, "
                "or the hostPath /var/lib/kubelet/pod-resources is not mounted)",
                logging.INFO,
            )
        self._assignments = PodAssignments(
            by_device_id=MappingProxyType(dict(devices)),
            by_pod_uid=MappingProxyType(pods_by_uid),
            by_container_id=MappingProxyType(containers),
            taken_at=time.time(),
        )
        return self._assignments

    async def run(self) -> None:
        """Refresh every `refresh_seconds` in a worker thread until cancelled; an error never ends it."""
        while True:
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a bug or an odd node must not silently stop attribution for good
                self.last_error = f"pod attribution refresh failed: {type(exc).__name__}: {exc}"
                self._report("failed", self.last_error, logging.ERROR)
            await asyncio.sleep(self._refresh_seconds)

    def _report(self, state: str, message: str, level: int) -> None:
        # Log state changes only: one line when attribution turns on, off or starts failing,
        # not one every 30 s.
        if state != self._reported_state:
            self._reported_state = state
            log.log(level, message)


def _describe(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):
        return f"{code()}: {details()}"
    return f"{type(exc).__name__}: {exc}"


def pods_for_device(assignments: PodAssignments, identity: DeviceIdentity) -> tuple[PodRef, ...]:
    """The pods a device is allocated to: GPUs and MIG instances by UUID, NeuronCores by core or device."""
    if identity.kind in ("gpu", "mig"):
        return assignments.for_gpu(identity.uuid)
    if identity.kind == "neuroncore" and identity.device.startswith("neuroncore"):
        core = _index(identity.device.removeprefix("neuroncore"))
        device = _index(identity.parent.removeprefix("neuron")) if identity.parent.startswith("neuron") else None
        return assignments.for_neuroncore(core, device)
    return ()
