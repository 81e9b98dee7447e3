"""AWS instance identity through IMDSv2 (session tokens), with aiohttp.

Protocol: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` returns a token;
every `GET /latest/meta-data/...` then carries `X-aws-ec2-metadata-token`. A missing or expired
token gets 401; the client then fetches a new token and retries once. The token is kept across
refreshes and renewed well before its TTL ends (clock-driven, so tests can fast-forward).

IMDSv1 is never used: instances with `HttpTokens=required` refuse it, and a v1 fallback would
hide the usual container problem (hop limit 1, see docs/pricing.md).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from exporter.clock import Clock
from exporter.context.host.discovery import (
    MAX_TAGS,
    Discovered,
    MetadataFailure,
    NotThisCloud,
    bounded_tags,
)
from exporter.context.model import HostIdentity
from exporter.zones import region_from_zone

log = logging.getLogger(__name__)

TOKEN_PATH = "/latest/api/token"
META = "/latest/meta-data/"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
DEFAULT_TOKEN_TTL = 21600  # the maximum, 6 h
_LIFECYCLES = {"normal": "on-demand", "on-demand": "on-demand", "spot": "spot", "scheduled": "scheduled"}


class AwsImds:
    """An IMDSv2 client for one endpoint; keeps its session token between calls."""

    def __init__(self, endpoint: str, clock: Clock, token_ttl: int = DEFAULT_TOKEN_TTL, read_tags: bool = True) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._clock = clock
        self._ttl = max(1, min(token_ttl, DEFAULT_TOKEN_TTL))
        # Renew after 90 % of the TTL (at most 5 minutes early), never with a token about to expire.
        self._renew_margin = min(300.0, self._ttl * 0.1)
        self._read_tags = read_tags
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = asyncio.Lock()
        self.token_requests = 0  # how many tokens were fetched (tests check renewal)

    async def _fetch_token(self, session: aiohttp.ClientSession) -> str:
        self.token_requests += 1
        try:
            async with session.put(self._endpoint + TOKEN_PATH, headers={TTL_HEADER: str(self._ttl)}) as resp:
                body = await resp.text()
                if resp.status == 200 and body.strip():
                    return body.strip()
                if resp.status in (403, 404, 405):
                    # 403: IMDS disabled on this instance; 404/405: another cloud's service at this address.
                    raise NotThisCloud(f"IMDSv2 token request answered {resp.status}")
                raise MetadataFailure("token", f"IMDSv2 token request answered {resp.status}")
        # asyncio.TimeoutError (aiohttp's timeouts): on Python 3.10 it is not the builtin TimeoutError.
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise NotThisCloud(f"IMDSv2 not reachable: {exc.__class__.__name__}") from None

    async def token(self, session: aiohttp.ClientSession, stale: str | None = None) -> str:
        """A valid session token, fetched or renewed when needed.

        `stale` is a token the service just refused: it is replaced, once, however many requests
        saw the 401 at the same time.
        """
        async with self._lock:
            now = self._clock.monotonic()
            expired = now >= self._token_expires - self._renew_margin
            if self._token is None or expired or (stale is not None and self._token == stale):
                self._token = await self._fetch_token(session)
                self._token_expires = now + self._ttl
            return self._token

    async def get(self, session: aiohttp.ClientSession, path: str) -> str | None:
        """GET a metadata path; None on 404; retries once with a fresh token on 401."""
        refused: str | None = None
        for attempt in (1, 2):
            token = await self.token(session, stale=refused)
            async with session.get(self._endpoint + META + path, headers={TOKEN_HEADER: token}) as resp:
                if resp.status == 200:
                    return await resp.text()
                if resp.status == 404:
                    return None
                if resp.status == 401 and attempt == 1:
                    log.debug("IMDS answered 401 for %s; renewing the token", path)
                    refused = token
                    continue
                reason = "unauthorized" if resp.status == 401 else "http_error"
                raise MetadataFailure(reason, f"IMDS answered {resp.status} for {path}")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _tags(self, session: aiohttp.ClientSession) -> tuple[tuple[tuple[str, str], ...], bool]:
        listing = await self.get(session, "tags/instance")
        if listing is None:
            return (), False  # InstanceMetadataTags is not enabled
        keys = [k.strip() for k in listing.splitlines() if k.strip()][:MAX_TAGS]
        values = await asyncio.gather(*(self.get(session, f"tags/instance/{key}") for key in keys))
        return bounded_tags([(k, v) for k, v in zip(keys, values, strict=True) if v is not None]), True

    async def discover(self, session: aiohttp.ClientSession) -> Discovered:
        """The instance's identity and tags; NotThisCloud when IMDS is not there."""
        await self.token(session)
        try:
            fields = await asyncio.gather(
                self.get(session, "instance-type"),
                self.get(session, "instance-id"),
                self.get(session, "placement/region"),
                self.get(session, "placement/availability-zone"),
                self.get(session, "instance-life-cycle"),
            )
            instance_type, instance_id, region, zone, lifecycle = (f.strip() if f else "" for f in fields)
            if self._read_tags:
                tags, tags_enabled = await self._tags(session)
            else:
                tags, tags_enabled = (), False
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise MetadataFailure("unreachable", f"IMDS stopped answering: {exc.__class__.__name__}") from None
        if not instance_type:
            raise MetadataFailure("bad_response", "IMDS gave a token but no instance-type")
        identity = HostIdentity(
            provider="aws",
            instance_type=instance_type,
            instance_id=instance_id,
            region=region or region_from_zone(zone),
            zone=zone,
            lifecycle=_LIFECYCLES.get(lifecycle, lifecycle or "on-demand"),
            tags=tags,
            source="aws-imds",
        )
        return Discovered(identity, tags_enabled=tags_enabled)
