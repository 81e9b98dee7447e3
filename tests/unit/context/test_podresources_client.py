"""PodResourcesWatcher against a real gRPC server on a unix socket serving v1.PodResourcesLister."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from exporter.context.owner.cgroup import parse_cgroup
from exporter.context.owner.kubernetes import (
    EMPTY,
    PodAssignments,
    PodRef,
    PodResourcesWatcher,
    device_assignments,
    gpu_key,
    neuron_device_key,
    neuroncore_key,
)
from exporter.context.podresources import api_pb2, api_pb2_grpc

GPU0 = "GPU-8f6c1f9e-0000-1111-2222-333344445555"
GPU1 = "GPU-1a2b3c4d-0000-1111-2222-333344445555"
MIG = "MIG-5d6e7f80-0000-1111-2222-333344445555"
UID_A = "3f2a1b4c-1111-2222-3333-444455556666"
CID_A = "ab" * 32


def pod(name: str, namespace: str, containers: dict[str, list[tuple[str, list[str]]]]) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                devices=[
                    api_pb2.ContainerDevices(
                        resource_name=resource,
                        device_ids=ids,
                        topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=0)]),
                    )
                    for resource, ids in devices
                ],
            )
            for container, devices in containers.items()
        ],
    )


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """Answers List with whatever `pods` holds; fails with UNAVAILABLE while `failing` is set."""

    def __init__(self) -> None:
        self.pods: list[api_pb2.PodResources] = []
        self.failing = False
        self.calls = 0
        self.lock = threading.Lock()

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        with self.lock:
            self.calls += 1
            if self.failing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is restarting")
            return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)


@pytest.fixture
def node() -> Iterator[tuple[Path, FakeKubelet]]:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer.
    root = Path(tempfile.mkdtemp(prefix="kubelet-", dir="/tmp"))
    socket_path = root / "pod-resources" / "kubelet.sock"
    socket_path.parent.mkdir()
    kubelet = FakeKubelet()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(kubelet, server)  # type: ignore[no-untyped-call]
    assert server.add_insecure_port(f"unix://{socket_path}") != 0
    server.start()
    try:
        yield root, kubelet
    finally:
        server.stop(grace=None)
        shutil.rmtree(root, ignore_errors=True)


def watcher_for(root: Path) -> PodResourcesWatcher:
    return PodResourcesWatcher(
        root / "pod-resources" / "kubelet.sock",
        pod_log_dir=root / "log" / "pods",
        container_log_dir=root / "log" / "containers",
        refresh_seconds=0.05,
        timeout_seconds=2.0,
    )


def test_gpu_and_neuron_assignments(node: tuple[Path, FakeKubelet]) -> None:
    root, kubelet = node
    kubelet.pods = [
        pod("trainer-0", "ml", {"main": [("nvidia.com/gpu", [GPU0]), ("cpu-pinning.example/x", ["7"])]}),
        # Time-slicing replicas of one GPU handed to two pods.
        pod("notebook-a", "research", {"jupyter": [("nvidia.com/gpu", [f"{GPU1}::0"])]}),
        pod("notebook-b", "research", {"jupyter": [("nvidia.com/gpu", [f"{GPU1}::3"])]}),
        pod("small", "ml", {"infer": [("nvidia.com/mig-1g.10gb", [MIG])]}),
        pod("llm", "serving", {"server": [("aws.amazon.com/neuroncore", ["0", "1"])]}),
        pod("batch", "serving", {"worker": [("aws.amazon.com/neuron", ["3"])]}),
        pod("idle", "default", {"app": []}),
    ]
    watcher = watcher_for(root)
    snapshot = watcher.refresh()

    assert snapshot.for_gpu(GPU0) == (PodRef("ml", "trainer-0", "main"),)
    assert snapshot.for_gpu(GPU1) == (
        PodRef("research", "notebook-a", "jupyter"),
        PodRef("research", "notebook-b", "jupyter"),
    )
    assert snapshot.for_gpu(MIG) == (PodRef("ml", "small", "infer"),)
    assert snapshot.for_gpu("GPU-unassigned") == ()
    assert snapshot.for_neuroncore(1) == (PodRef("serving", "llm", "server"),)
    assert snapshot.for_neuroncore(2) == ()
    # Core 7 sits on Neuron device 3, which the batch pod holds whole; a direct core assignment wins.
    assert snapshot.for_neuroncore(7, device=3) == (PodRef("serving", "batch", "worker"),)
    assert snapshot.for_neuroncore(1, device=0) == (PodRef("serving", "llm", "server"),)
    assert snapshot.for_neuroncore(None, device=3) == (PodRef("serving", "batch", "worker"),)
    assert snapshot.for_neuroncore(7) == () and snapshot.for_neuroncore(None) == ()
    assert set(snapshot.by_device_id) == {
        GPU0,
        GPU1,
        MIG,
        neuroncore_key(0),
        neuroncore_key(1),
        neuron_device_key(3),
    }
    assert watcher.assignments is snapshot
    assert watcher.last_error == "" and watcher.last_success > 0
    with pytest.raises(TypeError):
        snapshot.by_device_id[GPU0] = ()  # type: ignore[index]


def test_failed_refresh_keeps_the_previous_map(
    node: tuple[Path, FakeKubelet], caplog: pytest.LogCaptureFixture
) -> None:
    root, kubelet = node
    kubelet.pods = [pod("trainer-0", "ml", {"main": [("nvidia.com/gpu", [GPU0])]})]
    watcher = watcher_for(root)
    watcher.refresh()
    kubelet.failing = True
    with caplog.at_level(logging.INFO, logger="exporter.context.owner.kubernetes"):
        for _ in range(3):
            snapshot = watcher.refresh()
    assert snapshot.for_gpu(GPU0) == (PodRef("ml", "trainer-0", "main"),)
    assert "UNAVAILABLE" in watcher.last_error and "kubelet is restarting" in watcher.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged on the change, not on every refresh
    kubelet.failing = False
    kubelet.pods = []
    assert watcher.refresh().for_gpu(GPU0) == ()
    assert watcher.last_error == ""


def test_no_socket_means_disabled_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watcher = PodResourcesWatcher(
        tmp_path / "kubelet.sock", pod_log_dir=tmp_path / "pods", container_log_dir=tmp_path / "containers"
    )
    assert not watcher.enabled
    assert watcher.assignments is EMPTY
    with caplog.at_level(logging.INFO, logger="exporter.context.owner.kubernetes"):
        for _ in range(3):
            snapshot = watcher.refresh()
    assert snapshot.by_device_id == {} and snapshot.by_pod_uid == {}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "not found" in messages[0]


def test_kubelet_that_does_not_answer_times_out(tmp_path: Path) -> None:
    # A unix socket that accepts but never speaks HTTP/2: the call must end at the timeout.
    import socket

    path = Path(tempfile.mkdtemp(prefix="mute-", dir="/tmp")) / "kubelet.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    try:
        watcher = PodResourcesWatcher(path, pod_log_dir=tmp_path, container_log_dir=tmp_path, timeout_seconds=0.5)
        watcher.refresh()
        assert "DEADLINE_EXCEEDED" in watcher.last_error or "UNAVAILABLE" in watcher.last_error
    finally:
        listener.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def test_shared_gpu_processes_resolve_through_cgroups_and_log_dirs(node: tuple[Path, FakeKubelet]) -> None:
    root, _ = node
    pods = root / "log" / "pods"
    containers = root / "log" / "containers"
    (pods / f"ml_trainer-0_{UID_A}" / "main").mkdir(parents=True)
    (pods / "not-a-pod-dir").mkdir()
    containers.mkdir(parents=True)
    (containers / f"trainer-0_ml_main-sidecar-{CID_A}.log").touch()
    (containers / "garbage.log").touch()
    snapshot = watcher_for(root).refresh()

    assert snapshot.by_pod_uid == {UID_A: PodRef("ml", "trainer-0", uid=UID_A)}
    by_container = parse_cgroup(
        f"0::/kubepods.slice/kubepods-pod{UID_A.replace('-', '_')}.slice/cri-containerd-{CID_A}.scope"
    )
    assert snapshot.for_cgroup(by_container) == PodRef("ml", "trainer-0", "main-sidecar", UID_A)
    by_pod_only = parse_cgroup(f"0::/kubepods.slice/kubepods-pod{UID_A.replace('-', '_')}.slice")
    assert snapshot.for_cgroup(by_pod_only) == PodRef("ml", "trainer-0", uid=UID_A)
    assert snapshot.for_cgroup(parse_cgroup("0::/system.slice/train.service")) is None


def test_run_refreshes_on_a_timer(node: tuple[Path, FakeKubelet]) -> None:
    root, kubelet = node
    kubelet.pods = [pod("a", "ml", {"main": [("nvidia.com/gpu", [GPU0])]})]
    watcher = watcher_for(root)

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        try:
            for _ in range(200):
                if watcher.assignments.for_gpu(GPU0):
                    break
                await asyncio.sleep(0.01)
            kubelet.pods = [pod("b", "ml", {"main": [("nvidia.com/gpu", [GPU0])]})]
            for _ in range(200):
                if watcher.assignments.for_gpu(GPU0) == (PodRef("ml", "b", "main"),):
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(scenario())
    assert watcher.assignments.for_gpu(GPU0) == (PodRef("ml", "b", "main"),)
    assert kubelet.calls >= 2


def test_unsearchable_kubelet_directory_means_disabled_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A systemd DynamicUser on a node where /var/lib/kubelet is root-only: stat() below it fails
    # with EACCES. Simulated at the syscall wrapper because the suite runs as root.
    blocked = tmp_path / "kubelet"
    (blocked / "pod-resources").mkdir(parents=True)
    (blocked / "pod-resources" / "kubelet.sock").touch()
    real_stat, real_listdir = os.stat, os.listdir

    def denied(path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(f"{blocked}/")

    def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def listdir(path: Any = ".") -> list[str]:
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "listdir", listdir)
    watcher = PodResourcesWatcher(
        blocked / "pod-resources" / "kubelet.sock",
        pod_log_dir=blocked / "pods",
        container_log_dir=blocked / "containers",
    )
    assert watcher.enabled is False
    snapshot = watcher.refresh()
    assert snapshot.by_device_id == {} and snapshot.by_pod_uid == {} and snapshot.by_container_id == {}


def test_run_survives_a_refresh_that_raises(node: tuple[Path, FakeKubelet], caplog: pytest.LogCaptureFixture) -> None:
    root, kubelet = node
    kubelet.pods = [pod("a", "ml", {"main": [("nvidia.com/gpu", [GPU0])]})]
    watcher = watcher_for(root)
    real_refresh = watcher.refresh
    calls = 0

    def flaky_refresh() -> PodAssignments:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("boom")
        return real_refresh()

    watcher.refresh = flaky_refresh  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(watcher.run())
        try:
            for _ in range(500):
                if calls >= 2:
                    break
                await asyncio.sleep(0.01)
            assert not task.done(), "run() ended on a refresh error"
            assert "RuntimeError: boom" in watcher.last_error
            for _ in range(500):
                if watcher.assignments.for_gpu(GPU0):
                    break
                await asyncio.sleep(0.01)
            assert not task.done()
        finally:
            task.cancel()

    with caplog.at_level(logging.INFO, logger="exporter.context.owner.kubernetes"):
        asyncio.run(scenario())
    assert watcher.assignments.for_gpu(GPU0) == (PodRef("ml", "a", "main"),)
    assert watcher.last_error == ""
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "boom" in errors[0].getMessage()  # three failures, one line


def test_odd_device_ids_are_skipped_not_raised() -> None:
    # '²'.isdigit() is True but int('²') raises: such an id must not make every refresh fail.
    response = api_pb2.ListPodResourcesResponse(
        pod_resources=[pod("p", "ns", {"c": [("aws.amazon.com/neuroncore", ["²", "x", "3"])]})]
    )
    assert device_assignments(response) == {neuroncore_key(3): (PodRef("ns", "p", "c"),)}


def test_keys() -> None:
    assert gpu_key(f"{GPU0}::12") == GPU0
    assert neuroncore_key(3) != neuron_device_key(3)
