"""GCP instance identity from the metadata server (`Metadata-Flavor: Google`).

VM labels are not served by the metadata server, so a GCP host has no tags here; use the static
`host.tags` config or attribution rules instead.
"""

from __future__ import annotations

import asyncio

import aiohttp

from exporter.context.host.discovery import Discovered, MetadataFailure, NotThisCloud
from exporter.context.model import HostIdentity
from exporter.zones import region_from_zone

BASE = "/computeMetadata/v1/instance/"
FLAVOR = {"Metadata-Flavor": "Google"}


async def _get(session: aiohttp.ClientSession, endpoint: str, path: str) -> str:
    # One retry on 503: the server answers 503 during maintenance events.
    for attempt in (1, 2):
        async with session.get(endpoint + BASE + path, headers=FLAVOR) as resp:
            if resp.headers.get("Metadata-Flavor") != "Google":
                raise NotThisCloud(f"{endpoint} is not a GCP metadata server")
            if resp.status == 200:
                return (await resp.text()).strip()
            if resp.status == 503 and attempt == 1:
                await asyncio.sleep(0.05)
                continue
            raise MetadataFailure("http_error", f"GCP metadata answered {resp.status} for {path}")
    raise AssertionError("unreachable")  # pragma: no cover


async def discover_gcp(session: aiohttp.ClientSession, endpoint: str) -> Discovered:
    """The instance's identity; NotThisCloud when no GCP metadata server answers."""
    endpoint = endpoint.rstrip("/")
    try:
        machine_type = await _get(session, endpoint, "machine-type")
    # asyncio.TimeoutError (aiohttp's timeouts): on Python 3.10 it is not the builtin TimeoutError.
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise NotThisCloud(f"GCP metadata not reachable: {exc.__class__.__name__}") from None
    try:
        zone_path, instance_id, preemptible = await asyncio.gather(
            _get(session, endpoint, "zone"),
            _get(session, endpoint, "id"),
            _get(session, endpoint, "scheduling/preemptible"),
        )
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise MetadataFailure("unreachable", f"GCP metadata stopped answering: {exc.__class__.__name__}") from None
    # machine-type is `projects/<num>/machineTypes/<type>`, zone `projects/<num>/zones/<zone>`.
    instance_type = machine_type.rsplit("/", 1)[-1]
    zone = zone_path.rsplit("/", 1)[-1]
    if not instance_type:
        raise MetadataFailure("bad_response", "GCP metadata gave an empty machine-type")
    identity = HostIdentity(
        provider="gcp",
        instance_type=instance_type,
        instance_id=instance_id,
        region=region_from_zone(zone),
        zone=zone,
        lifecycle="spot" if preemptible.upper() == "TRUE" else "on-demand",
        source="gcp-metadata",
    )
    return Discovered(identity, tags_enabled=True)
