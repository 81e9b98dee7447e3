"""A fake EC2 `DescribeInstances` endpoint in EC2's real query/XML wire format, for boto3 pointed
at it by endpoint_url.

Requests are POSTed form-encoded (`Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=...`)
and signed with SigV4; the region comes from the signature's credential scope, so one fake serves
several regions, each with its own instances and behaviour. Answers are
`<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">` with
`reservationSet/item/instancesSet/item` and a `nextToken` while more pages remain; errors are
`<Response><Errors><Error><Code>...` with 503 RequestLimitExceeded or 403 UnauthorizedOperation.
The fake honours the `instance-state-name` and `instance-type` filters (with `*` wildcards), so a
client that forgets them gets the stopped and non-accelerator decoys.
"""

from __future__ import annotations

import fnmatch
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from tests.fakes.aws_api import EC2_NS, AwsApiFake

_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/ec2/aws4_request")


@dataclass(frozen=True)
class Ec2Instance:
    """One instance as the fake describes it."""

    instance_id: str
    instance_type: str
    launch_time: str  # ISO 8601 as EC2 writes it: 2026-11-01T10:00:00.000Z
    state: str = "running"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RegionBehaviour:
    """What one region answers."""

    instances: list[Ec2Instance] = field(default_factory=list)
    page_size: int = 2
    throttle_next: int = 0  # answer this many calls with RequestLimitExceeded first
    deny: bool = False


@dataclass
class Ec2InstancesFake:
    """Regions by name; `calls` counts DescribeInstances requests per region."""

    regions: dict[str, RegionBehaviour] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    filters_seen: list[dict[str, list[str]]] = field(default_factory=list)

    # The same error envelope as the other EC2 actions of the AWS fake.
    _error = staticmethod(AwsApiFake._ec2_error)

    async def _handle(self, request: web.Request) -> web.Response:
        scope = _REGION.search(request.headers.get("Authorization", ""))
        if scope is None:
            return self._error("AuthFailure", "AWS was not able to validate the provided access credentials", 401)
        region = scope.group(1)
        form = await request.post()
        if form.get("Action") != "DescribeInstances" or form.get("Version") != "2016-11-15":
            return self._error("InvalidAction", f"The action {form.get('Action')} is not valid", 400)
        self.calls[region] = self.calls.get(region, 0) + 1
        behaviour = self.regions.get(region, RegionBehaviour())
        if behaviour.throttle_next > 0:
            behaviour.throttle_next -= 1
            return self._error("RequestLimitExceeded", "Request limit exceeded.", 503)
        if behaviour.deny:
            return self._error(
                "UnauthorizedOperation", "You are not authorized to perform this operation: ec2:DescribeInstances", 403
            )
        filters = _filters(form)
        self.filters_seen.append(filters)
        matching = [i for i in behaviour.instances if _matches(i, filters)]
        start = int(str(form.get("NextToken") or "0"))
        page = matching[start : start + behaviour.page_size]
        token = str(start + behaviour.page_size) if start + behaviour.page_size < len(matching) else ""
        return web.Response(text=_describe_xml(page, token), content_type="text/xml")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        return app


def _filters(form: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, name in form.items():
        match = re.fullmatch(r"Filter\.(\d+)\.Name", key)
        if match:
            prefix = f"Filter.{match.group(1)}.Value."
            out[str(name)] = [str(v) for k, v in form.items() if k.startswith(prefix)]
    return out


def _matches(instance: Ec2Instance, filters: dict[str, list[str]]) -> bool:
    fields = {"instance-state-name": instance.state, "instance-type": instance.instance_type}
    return all(
        any(fnmatch.fnmatchcase(fields[name], pattern) for pattern in patterns)
        for name, patterns in filters.items()
        if name in fields
    )


def _describe_xml(instances: list[Ec2Instance], token: str) -> str:
    items = []
    for inst in instances:
        code = {"running": 16, "stopped": 80}.get(inst.state, 0)
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in inst.tags.items())
        items.append(
            f"<item><reservationId>r-{inst.instance_id[2:]}</reservationId><ownerId>123456789012</ownerId>"
            "<groupSet/><instancesSet><item>"
            f"<instanceId>{inst.instance_id}</instanceId><imageId>ami-0123456789abcdef0</imageId>"
            f"<instanceState><code>{code}</code><name>{inst.state}</name></instanceState>"
            f"<instanceType>{inst.instance_type}</instanceType><launchTime>{inst.launch_time}</launchTime>"
            "<placement><availabilityZone>us-east-1a</availabilityZone><tenancy>default</tenancy></placement>"
            f"<tagSet>{tags}</tagSet>"
            "</item></instancesSet></item>"
        )
    next_token = f"<nextToken>{token}</nextToken>" if token else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="{EC2_NS}">'
        f"<requestId>{uuid.uuid4()}</requestId><reservationSet>{''.join(items)}</reservationSet>{next_token}"
        "</DescribeInstancesResponse>"
    )
