"""The committed gRPC stubs match api.proto, and api.proto matches the kubelet's wire format."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT
from google.protobuf import descriptor_pb2

from exporter.context.podresources import api_pb2, api_pb2_grpc

PROTO = "exporter/context/podresources/api.proto"


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "api.pb"
    status = protoc.main(["protoc", f"-I{ROOT}", f"--descriptor_set_out={out}", PROTO])
    assert status == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in fresh.message_type:  # descriptor sets carry json_name; generated code does not
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(committed)
    assert committed == fresh, "api_pb2.py is stale: run python -m exporter.context.podresources.regenerate"
    for name in ("api_pb2.pyi", "api_pb2_grpc.py"):
        assert (ROOT / "exporter/context/podresources" / name).stat().st_mtime > 0


def test_wire_format_matches_the_kubelet_api() -> None:
    # Field numbers of k8s.io/kubelet/pkg/apis/podresources/v1/api.proto: a mismatch would decode garbage.
    expected = {
        "ListPodResourcesResponse": {"pod_resources": 1},
        "PodResources": {"name": 1, "namespace": 2, "containers": 3},
        "ContainerResources": {"name": 1, "devices": 2},
        "ContainerDevices": {"resource_name": 1, "device_ids": 2, "topology": 3},
        "TopologyInfo": {"nodes": 1},
        "NUMANode": {"ID": 1},
    }
    for message, fields in expected.items():
        descriptor = api_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in descriptor.fields} == fields, message
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert service.methods_by_name["List"].input_type.full_name == "v1.ListPodResourcesRequest"
    assert hasattr(api_pb2_grpc, "PodResourcesListerStub")


def test_unknown_fields_from_a_newer_kubelet_are_skipped() -> None:
    # Newer kubelets add cpu_ids (3), memory (4) and dynamic_resources (5) to ContainerResources.
    container = api_pb2.ContainerResources(name="main")
    extra = bytes([0x1A, 0x01, 0x07])  # field 3, length-delimited packed int64 [7]
    parsed = api_pb2.ContainerResources.FromString(container.SerializeToString() + extra)
    assert parsed.name == "main"
