"""Coverage: running accelerator instances that no exporter reports, listed through EC2
DescribeInstances (boto3) from a loopback fake speaking EC2's query/XML protocol: pagination,
throttling and an access-denied region (reported, not fatal)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from exporter.report.aws import findings_for, is_accelerator_type, list_instances
from tests.fakes.ec2_instances import Ec2Instance, Ec2InstancesFake, RegionBehaviour
from tests.fakes.server import serve

LAUNCH = "2026-11-01T10:00:00.000Z"
LAUNCH_UNIX = 1793527200.0  # 2026-11-01T10:00:00Z


def east() -> RegionBehaviour:
    return RegionBehaviour(
        instances=[
            Ec2Instance("i-0000000000000p4d1", "p4d.24xlarge", LAUNCH, tags={"Team": "ml", "Workload": "train"}),
            Ec2Instance("i-00000000000monit1", "p4d.24xlarge", LAUNCH),
            Ec2Instance("i-0000000000000g5x1", "g5.xlarge", LAUNCH, tags={"Team": "search"}),
            Ec2Instance("i-000000000000stop1", "p4d.24xlarge", LAUNCH, state="stopped"),
            Ec2Instance("i-00000000000000c51", "c5.xlarge", LAUNCH),
            Ec2Instance("i-0000000000inf2xl1", "inf2.xlarge", LAUNCH),
            Ec2Instance("i-0000000000trn1321", "trn1.32xlarge", LAUNCH),
        ],
        page_size=2,
    )


@pytest.fixture
def ec2(aws_env: None) -> Iterator[tuple[Ec2InstancesFake, str]]:
    fake = Ec2InstancesFake(
        regions={
            "us-east-1": east(),
            "us-west-2": RegionBehaviour(
                instances=[Ec2Instance("i-0000000000000p5e1", "p5.48xlarge", LAUNCH)], throttle_next=2
            ),
            "eu-west-1": RegionBehaviour(deny=True),
        }
    )
    with serve(fake.app()) as server:
        yield fake, server.url


def test_accelerator_families_are_recognised() -> None:
    for name in (
        "p4d.24xlarge",
        "p5en.48xlarge",
        "g6e.xlarge",
        "g4dn.metal",
        "inf2.xlarge",
        "trn2.48xlarge",
        "dl1.24xlarge",
    ):
        assert is_accelerator_type(name), name
    for name in ("c5.xlarge", "m7g.large", "r6gd.xlarge", "t3.micro", "c7gn.large"):
        assert not is_accelerator_type(name), name


def test_pages_throttling_and_access_denied(ec2: tuple[Ec2InstancesFake, str]) -> None:
    fake, url = ec2
    instances, problems = asyncio.run(list_instances(["us-east-1", "us-west-2", "eu-west-1"], url))
    ids = sorted(i.instance_id for i in instances)
    # Running accelerators only: not the stopped p4d nor the c5 (the filters reached the server).
    assert ids == sorted(
        [
            "i-0000000000000p4d1",
            "i-00000000000monit1",
            "i-0000000000000g5x1",
            "i-0000000000inf2xl1",
            "i-0000000000trn1321",
            "i-0000000000000p5e1",
        ]
    )
    assert fake.calls["us-east-1"] == 3  # five matches, two per page
    assert fake.calls["us-west-2"] == 3  # two throttled answers, then the page
    assert any(f.get("instance-state-name") == ["running"] for f in fake.filters_seen)
    assert len(problems) == 1
    assert "eu-west-1" in problems[0] and "UnauthorizedOperation" in problems[0]
    assert "ec2:DescribeInstances" in problems[0]
    p4d = next(i for i in instances if i.instance_id == "i-0000000000000p4d1")
    assert p4d.launch_time == LAUNCH_UNIX and p4d.tags == {"Team": "ml", "Workload": "train"}
    assert p4d.region == "us-east-1"


def test_unmonitored_findings_skip_monitored_instances(ec2: tuple[Ec2InstancesFake, str]) -> None:
    _, url = ec2
    instances, _ = asyncio.run(list_instances(["us-east-1"], url))
    end = LAUNCH_UNIX + 21 * 86400
    findings = {f.instance: f for f in findings_for(instances, {"i-00000000000monit1"}, end)}
    assert set(findings) == {"i-0000000000000p4d1", "i-0000000000000g5x1", "i-0000000000inf2xl1", "i-0000000000trn1321"}
    p4d = findings["i-0000000000000p4d1"]
    assert p4d.kind == "unmonitored" and p4d.team == "ml" and p4d.since == LAUNCH_UNIX
    assert p4d.dollars == pytest.approx(21.957642 * 21 * 24)
    assert p4d.dollars_per_month == pytest.approx(21.957642 * 720)
    assert "504 h" in p4d.evidence and "Team=ml" in p4d.evidence and "Workload=train" in p4d.evidence
    assert findings["i-0000000000000g5x1"].team == "search"
    assert findings["i-0000000000inf2xl1"].team == "unassigned"
