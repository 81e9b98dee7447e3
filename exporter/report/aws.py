"""Coverage: accelerator instances the cloud says are running but no exporter reports.

Lists running instances of accelerator families with EC2 DescribeInstances (boto3, imported
lazily: it is the [aws] extra) and joins them to accel_instance_info{instance_id}. A region that
fails (access denied, throttled past the retries, unreachable) is reported as a problem, never fatal.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exporter.report.args import ReportOptions
from exporter.report.collect import FleetData
from exporter.report.instance_types import lookup
from exporter.report.model import MONTH_HOURS, Finding

# Accelerator families: p (NVIDIA training), g (NVIDIA graphics/inference), inf, trn, dl (Gaudi).
ACCELERATOR_TYPE = re.compile(r"(p\d+[a-z-]*\d*|g\d+[a-z]*|inf\d+[a-z]*|trn\d+[a-z]*|dl\d+[a-z]*)\.[a-z0-9]+")
TYPE_PATTERNS = ("p*", "g*", "inf*", "trn*", "dl*")


@dataclass(frozen=True)
class CloudInstance:
    """One running accelerator instance as EC2 describes it."""

    instance_id: str
    instance_type: str
    region: str
    launch_time: float
    tags: Mapping[str, str]


def is_accelerator_type(instance_type: str) -> bool:
    """True for p*, g*, inf*, trn* and dl* types (g: not the Graviton `c7g`-style suffixes)."""
    return ACCELERATOR_TYPE.fullmatch(instance_type) is not None


def _describe(region: str, endpoint_url: str | None) -> list[CloudInstance]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint_url,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=30),
    )
    paginator = client.get_paginator("describe_instances")
    pages = paginator.paginate(
        Filters=[
            {"Name": "instance-state-name", "Values": ["running"]},
            {"Name": "instance-type", "Values": list(TYPE_PATTERNS)},
        ]
    )
    out = []
    for page in pages:
        for reservation in page.get("Reservations", []):
            for item in reservation.get("Instances", []):
                instance_type = str(item.get("InstanceType", ""))
                if not is_accelerator_type(instance_type):
                    continue
                launched: Any = item.get("LaunchTime")
                out.append(
                    CloudInstance(
                        instance_id=str(item.get("InstanceId", "")),
                        instance_type=instance_type,
                        region=region,
                        launch_time=launched.timestamp() if isinstance(launched, datetime) else 0.0,
                        tags={str(t.get("Key")): str(t.get("Value")) for t in item.get("Tags", []) or []},
                    )
                )
    return out


def _problem(region: str, exc: Exception) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    hint = {
        "UnauthorizedOperation": "grant ec2:DescribeInstances to the report's credentials",
        "AuthFailure": "check the AWS credentials",
        "RequestLimitExceeded": "throttled past the retries: run again later",
    }.get(code, "check the credentials, the region name and the network")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"AWS {region}: DescribeInstances failed ({first}): {hint}; this region's unmonitored instances are missing"


async def list_instances(regions: Iterable[str], endpoint_url: str | None) -> tuple[list[CloudInstance], list[str]]:
    """Running accelerator instances of every region, and one problem line per failed region."""
    regions = list(regions)
    try:
        import boto3  # noqa: F401
    except ImportError:
        return [], ["--aws.regions needs boto3: install the [aws] extra (pip install 'accel-cost-exporter[aws]')"]
    results = await asyncio.gather(
        *(asyncio.to_thread(_describe, r, endpoint_url) for r in regions), return_exceptions=True
    )
    instances: list[CloudInstance] = []
    problems = []
    for region, result in zip(regions, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            problems.append(_problem(region, result))
        else:
            instances.extend(result)
    return instances, problems


def monitored_ids(data: FleetData) -> set[str]:
    """Instance IDs that some exporter reported in the range."""
    return {labels["instance_id"] for labels in data.info.values() if labels.get("instance_id")}


def findings_for(instances: Iterable[CloudInstance], monitored: set[str], end: float) -> list[Finding]:
    """One `unmonitored` finding per running instance that no exporter reports."""
    out = []
    for inst in instances:
        if inst.instance_id in monitored:
            continue
        entry = lookup(inst.instance_type)
        price = entry.dollars_per_hour if entry is not None else None
        hours = max(0.0, end - inst.launch_time) / 3600 if inst.launch_time else None
        tags = ", ".join(f"{k}={inst.tags[k]}" for k in ("Team", "Workload") if k in inst.tags)
        out.append(
            Finding(
                kind="unmonitored",
                instance=inst.instance_id,
                device=None,
                team=inst.tags.get("Team", "unassigned"),
                since=inst.launch_time or None,
                dollars=price * hours if price is not None and hours is not None else None,
                dollars_per_month=price * MONTH_HOURS if price is not None else None,
                evidence=f"{inst.instance_type} running in {inst.region}"
                + (f" for {hours:.0f} h" if hours is not None else "")
                + f" with no exporter; tags: {tags or 'none'}"
                + (f"; list price ${price:.2f}/h" if price is not None else "; no list price in the catalogue"),
            )
        )
    return out


async def unmonitored_findings(options: ReportOptions, data: FleetData) -> tuple[list[Finding], list[str]]:
    """The `unmonitored` findings of the regions in --aws.regions, and the regions' problems."""
    instances, problems = await list_instances(options.aws_regions, options.aws_endpoint_url)
    return findings_for(instances, monitored_ids(data), data.end), problems
