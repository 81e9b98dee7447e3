"""A device allocated to a pod but held by no process is charged to the pod's team (issue 6)."""

from __future__ import annotations

from types import MappingProxyType

from exporter.accounting.ledger import Ledger
from exporter.config import parse_config
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.owner.kubernetes import (
    PodAssignments,
    PodRef,
    gpu_key,
    neuron_device_key,
    neuroncore_key,
    pods_for_device,
)
from exporter.readings import DeviceIdentity, DeviceReading, SourceReport

GPU0 = DeviceIdentity("nvidia0", "GPU-aaaa", "nvidia", "NVIDIA L4", "gpu")
GPU1 = DeviceIdentity("nvidia1", "GPU-bbbb", "nvidia", "NVIDIA L4", "gpu")
CORE5 = DeviceIdentity("neuroncore5", "i-1-nc5", "aws", "inferentia2", "neuroncore", parent="neuron2")

CONFIG = parse_config(
    {
        "attribution": {
            "rules": [
                {"match": {"namespace": "search-*"}, "team": "search", "workload": "{pod}"},
                {"match": {"namespace": "ml"}, "team": "ml-platform"},
            ]
        }
    }
)


def _assignments() -> PodAssignments:
    return PodAssignments(
        by_device_id=MappingProxyType(
            {
                gpu_key("GPU-aaaa"): (PodRef("search-prod", "ranker-7f9", "server"),),
                neuron_device_key(2): (PodRef("ml", "bert-0", "worker"),),
            }
        ),
        by_pod_uid=MappingProxyType({}),
        by_container_id=MappingProxyType({}),
        taken_at=0.0,
    )


def test_pods_for_device_maps_gpus_by_uuid_and_cores_by_their_neuron_device() -> None:
    assignments = _assignments()
    assert [p.pod for p in pods_for_device(assignments, GPU0)] == ["ranker-7f9"]
    assert pods_for_device(assignments, GPU1) == ()
    assert [p.pod for p in pods_for_device(assignments, CORE5)] == ["bert-0"]


def test_pods_for_device_prefers_a_direct_core_assignment_then_the_parent_device() -> None:
    assignments = PodAssignments(
        by_device_id=MappingProxyType(
            {
                neuroncore_key(5): (PodRef("nlp", "t5-0", "worker"),),
                neuron_device_key(2): (PodRef("ml", "bert-0", "worker"),),
            }
        )
    )
    assert [p.pod for p in pods_for_device(assignments, CORE5)] == ["t5-0"]
    core4 = DeviceIdentity("neuroncore4", "i-1-nc4", "aws", "inferentia2", "neuroncore", parent="neuron2")
    assert [p.pod for p in pods_for_device(assignments, core4)] == ["bert-0"]
    assert pods_for_device(assignments, DeviceIdentity("neuroncore4", "u", "aws", "m", "neuroncore")) == ()
    odd = DeviceIdentity("neuroncore²", "u", "aws", "m", "neuroncore", parent="neuron2")
    assert [p.pod for p in pods_for_device(assignments, odd)] == ["bert-0"]


def test_idle_device_allocated_to_a_pod_is_charged_to_its_team() -> None:
    ledger = Ledger(CONFIG.accounting)
    assignments = _assignments()
    ledger.set_device_pods(lambda identity: pods_for_device(assignments, identity))
    context = HostContext(
        HostIdentity(provider="aws", instance_type="g6.12xlarge", tags=(("Team", "platform"),)),
        PriceQuote(3.6, "config"),
        RuleAttributor(CONFIG.attribution),
    )
    for step in range(3):
        readings = tuple(
            DeviceReading(d, up=True, busy_seconds=0.0, covered_seconds=10.0, utilization=0.0)
            for d in (GPU0, GPU1, CORE5)
        )
        ledger.ingest(SourceReport("test", readings, True, 0.0, 0.0), context, step * 10.0)
    devices = {d.identity.device: d for d in ledger.snapshot(20.0).devices}
    assert (devices["nvidia0"].owner.team, devices["nvidia0"].owner.workload) == ("search", "ranker-7f9")
    assert devices["neuroncore5"].owner.team == "ml-platform"
    assert devices["nvidia1"].owner.team == "platform"  # no pod: the instance's Team tag
    idle = dict(devices["nvidia0"].idle_cost)
    assert idle[("search", "ranker-7f9", "idle_free")] > 0
