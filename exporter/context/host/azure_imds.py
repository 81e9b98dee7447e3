"""Azure instance identity from IMDS (`Metadata: true`, no proxy, no X-Forwarded-For)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from exporter.context.host.discovery import Discovered, MetadataFailure, NotThisCloud, bounded_tags
from exporter.context.model import HostIdentity

# 2021-02-01 has every field used here (tagsList since 2019-06-04) and is served everywhere.
API_VERSION = "2021-02-01"
PATH = "/metadata/instance/compute"
_PRIORITY = {"regular": "on-demand", "spot": "spot", "low": "spot"}


async def discover_azure(session: aiohttp.ClientSession, endpoint: str) -> Discovered:
    """The VM's identity and tags; NotThisCloud when no Azure IMDS answers."""
    url = endpoint.rstrip("/") + PATH
    try:
        async with session.get(url, params={"api-version": API_VERSION}, headers={"Metadata": "true"}) as resp:
            if resp.status in (400, 401, 403, 404, 405):
                raise NotThisCloud(f"Azure IMDS answered {resp.status}")
            if resp.status != 200:
                raise MetadataFailure("http_error", f"Azure IMDS answered {resp.status}")
            body = await resp.text()
    # asyncio.TimeoutError (aiohttp's timeouts): on Python 3.10 it is not the builtin TimeoutError.
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise NotThisCloud(f"Azure IMDS not reachable: {exc.__class__.__name__}") from None
    try:
        compute = json.loads(body)
    except ValueError:
        raise NotThisCloud("Azure IMDS path answered with something that is not JSON") from None
    if not isinstance(compute, dict) or not isinstance(compute.get("vmSize"), str) or not compute["vmSize"]:
        raise MetadataFailure("bad_response", "Azure IMDS compute has no vmSize")
    raw_tags = compute.get("tagsList")
    pairs: list[tuple[str, str]] = []
    if isinstance(raw_tags, list):
        for item in raw_tags:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                pairs.append((item["name"], str(item.get("value", ""))))
    priority = str(compute.get("priority") or "Regular")
    identity = HostIdentity(
        provider="azure",
        instance_type=compute["vmSize"],
        instance_id=str(compute.get("vmId") or ""),
        region=str(compute.get("location") or ""),
        zone=str(compute.get("zone") or ""),
        lifecycle=_PRIORITY.get(priority.lower(), priority.lower()),
        tags=bounded_tags(pairs),
        source="azure-imds",
    )
    return Discovered(identity, tags_enabled=True)
