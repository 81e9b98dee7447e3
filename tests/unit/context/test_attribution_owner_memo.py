"""A process's owner is kept per distinct set of facts and rule set, across polls.

The owner (labels sanitised, rules matched) is a function of the process's facts and the rule set;
the pod and Slurm lookups are facts, so an answer that changes gives a new owner at once.
`attribute_ahead` attributes each distinct process of a report once.
"""

from __future__ import annotations

from exporter.clock import ManualClock
from exporter.config.load import parse_config
from exporter.context.model import Owner
from exporter.context.owner.attribution import RuleAttributor, attribute_ahead
from exporter.context.owner.cgroup import CgroupFacts
from exporter.context.owner.kubernetes import PodRef
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport

CGROUP = (
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f2a1b4c_5d6e_4f70_8192_a3b4c5d6e7f8.slice/"
    "cri-containerd-4b8f2e1c9d3a5b7e6f8a0c2d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a.scope\n"
)
RULES = parse_config({"attribution": {"rules": [{"match": {"namespace": "ml-*"}, "team": "ml", "workload": "{pod}"}]}})


class CountingLabels(RuleAttributor):
    """The real attributor over a pod table a test can change, counting its calls per pid."""

    def __init__(self, pods: dict[str, PodRef]) -> None:
        super().__init__(RULES.attribution, pod_lookup=lambda cgroup: self._pod(cgroup))
        self.pods = pods
        self.counted: dict[int, int] = {}

    def _pod(self, cgroup: CgroupFacts) -> PodRef | None:
        return self.pods.get(cgroup.pod_uid)

    def process_owner(self, process: ProcessReading) -> Owner:
        self.counted[process.pid] = self.counted.get(process.pid, 0) + 1
        return super().process_owner(process)


def test_an_owner_is_built_once_per_set_of_facts_and_rebuilt_when_a_fact_changes() -> None:
    uid = "3f2a1b4c-5d6e-4f70-8192-a3b4c5d6e7f8"
    attributor = CountingLabels({uid: PodRef("ml-train", "trainer-0", "main", uid)})
    built = 0
    original = attributor._owner_of

    def counting(facts: object) -> Owner:
        nonlocal built
        built += 1
        return original(facts)  # type: ignore[arg-type]

    attributor._owner_of = counting  # type: ignore[method-assign]
    process = ProcessReading(41, 2**30, "alice", "python train.py", 1000.0, CGROUP)
    first = attributor.process_owner(process)
    for _ in range(3):  # later polls: the same facts, the same owner, nothing matched or sanitised again
        assert attributor.process_owner(ProcessReading(41, 2**30, "alice", "python train.py", 1000.0, CGROUP)) == first
    assert (first.team, first.workload, first.pod, first.namespace) == ("ml", "trainer-0", "trainer-0", "ml-train")
    assert built == 1
    # The pod lookup now answers another pod for the same cgroup: other facts, another owner.
    attributor.pods[uid] = PodRef("web", "frontend-1", "main", uid)
    moved = attributor.process_owner(process)
    assert built == 2
    assert (moved.team, moved.pod, moved.namespace) == ("", "frontend-1", "web")


def test_attribute_ahead_attributes_each_distinct_process_of_a_report_once() -> None:
    attributor = CountingLabels({})
    processes = (ProcessReading(1, 10, "alice", "a"), ProcessReading(2, 20, "bob", "b"))
    devices = tuple(
        DeviceReading(
            DeviceIdentity(f"neuroncore{n}", f"u{n}", "aws", "trainium", "neuroncore"), up=True, processes=processes
        )
        for n in range(8)
    )
    report = SourceReport("neuron", devices, True, 0.1, 1000.0)
    assert attribute_ahead(report, attributor, ManualClock()).devices == devices
    assert attributor.counted == {1: 1, 2: 1}
