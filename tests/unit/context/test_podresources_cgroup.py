"""parse_cgroup: pod UID, container ID and systemd unit from /proc/<pid>/cgroup, v1 and v2."""

from __future__ import annotations

import pytest

from exporter.context.owner.cgroup import CgroupFacts, parse_cgroup

UID = "3f2a1b4c-1111-2222-3333-444455556666"
UID_SYSTEMD = UID.replace("-", "_")
CID = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cgroup v2, systemd driver, containerd
        (
            (
                f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/"
                f"cri-containerd-{CID}.scope\n"
            ),
            CgroupFacts(pod_uid=UID, container_id=CID),
        ),
        # guaranteed QoS pods sit directly under kubepods.slice; CRI-O
        (
            f"0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/crio-{CID}.scope\n",
            CgroupFacts(pod_uid=UID, container_id=CID),
        ),
        # seen from inside a DaemonSet pod's cgroup namespace
        (
            f"0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope",
            CgroupFacts(pod_uid=UID, container_id=CID),
        ),
        # cgroup v1, cgroupfs driver: the unified line is absent, every controller has the path
        (
            f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
            "1:name=systemd:/kubepods/burstable/pod" + UID + "/" + CID + "\n",
            CgroupFacts(pod_uid=UID, container_id=CID),
        ),
        # static pods: the UID is a 32-hex hash without dashes
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{'ab' * 16}.slice/cri-containerd-{CID}.scope",
            CgroupFacts(pod_uid="ab" * 16, container_id=CID),
        ),
        # the pause sandbox or a pod-level process: pod without container
        (f"0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice\n", CgroupFacts(pod_uid=UID)),
        # plain Docker and Podman, no Kubernetes
        (f"0::/system.slice/docker-{CID}.scope\n", CgroupFacts(container_id=CID)),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CgroupFacts(container_id=CID)),
        (f"12:pids:/docker/{CID}\n", CgroupFacts(container_id=CID)),
        # systemd services and user sessions
        ("0::/system.slice/ollama.service\n", CgroupFacts(unit="ollama.service")),
        (
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/train.service\n",
            CgroupFacts(unit="train.service"),
        ),
        ("0::/user.slice/user-1000.slice/session-4.scope\n", CgroupFacts(unit="session-4.scope")),
        # hybrid v1: the unit comes from name=systemd even when listed after the others
        ("5:memory:/\n1:name=systemd:/system.slice/jupyter.service\n0::/\n", CgroupFacts(unit="jupyter.service")),
        # not Kubernetes despite the letters
        (f"0::/system.slice/podman-{CID[:12]}.scope\n", CgroupFacts(unit=f"podman-{CID[:12]}.scope")),
        ("0::/\n", CgroupFacts()),
        ("", CgroupFacts()),
        ("not a cgroup file", CgroupFacts()),
    ],
)
def test_parse_cgroup(text: str, expected: CgroupFacts) -> None:
    assert parse_cgroup(text) == expected


def test_facts_are_frozen() -> None:
    facts = parse_cgroup("0::/system.slice/a.service")
    with pytest.raises(AttributeError):
        facts.unit = "b.service"  # type: ignore[misc]
