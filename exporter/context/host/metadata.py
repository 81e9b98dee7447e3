"""Host identity: ask the cloud metadata services at once, take the first good answer, then overlay config.

Order of precedence, field by field: the static `host:` config section, then what a metadata
service said (or, in --demo, the scenario's host), then hints from sources (neuron-monitor's
instance_info) for fields still empty. No service answering is normal (on premises, a laptop,
a container without IMDS access) and costs at most `metadata.timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import aiohttp

from exporter.clock import Clock
from exporter.config.model import HostSettings, MetadataSettings
from exporter.context.errors import ErrorCounts, LogOnce
from exporter.context.host.aws_imds import AwsImds
from exporter.context.host.azure_imds import discover_azure
from exporter.context.host.discovery import Discovered, MetadataFailure, NotThisCloud
from exporter.context.host.gcp_metadata import discover_gcp
from exporter.context.model import HostIdentity
from exporter.readings import HostHints

log = logging.getLogger(__name__)

COLLECTOR = "metadata"


def merge_identity(
    discovered: HostIdentity | None,
    static: HostSettings,
    demo: HostSettings | None = None,
    hints: HostHints | None = None,
) -> HostIdentity:
    """Combine the identity sources; `source` names the base and `+config` when config overrode fields."""
    if demo is not None:
        base = HostIdentity(
            provider=demo.provider or "aws",
            instance_type=demo.instance_type or "",
            instance_id=demo.instance_id or "",
            region=demo.region or "",
            zone=demo.zone or "",
            lifecycle=demo.lifecycle or "on-demand",
            tags=demo.tags,
            source="demo",
        )
    elif discovered is not None:
        base = discovered
    elif hints is not None and (hints.instance_type or hints.instance_id):
        base = HostIdentity(
            provider=hints.provider or ("aws" if hints.instance_id.startswith("i-") else "unknown"),
            instance_type=hints.instance_type,
            instance_id=hints.instance_id,
            region=hints.region,
            zone=hints.zone,
            source="neuron-monitor",
        )
    else:
        base = HostIdentity()
    overrides: dict[str, object] = {}
    for name in ("provider", "instance_type", "instance_id", "region", "zone", "lifecycle"):
        value = getattr(static, name)
        if value:
            overrides[name] = value
    if static.tags:
        merged = dict(base.tags)
        merged.update(static.tags)
        overrides["tags"] = tuple(sorted(merged.items()))
    if not overrides:
        return base
    source = "config" if base.source == "none" else f"{base.source}+config"
    if overrides.get("provider") is None and base.provider == "unknown" and "instance_type" in overrides:
        overrides["provider"] = "static"
    return replace(base, source=source, **overrides)  # type: ignore[arg-type]


def describe(identity: HostIdentity) -> str:
    """A one-line summary for the log."""
    where = "/".join(part for part in (identity.region, identity.zone) if part) or "no region"
    return (
        f"{identity.provider} {identity.instance_type or '(no instance type)'} "
        f"{identity.instance_id or '(no instance id)'} {where} {identity.lifecycle}, {len(identity.tags)} tags"
    )


class MetadataResolver:
    """Asks the configured metadata services concurrently; the first usable answer wins."""

    def __init__(self, settings: MetadataSettings, clock: Clock, errors: ErrorCounts) -> None:
        self._settings = settings
        self._errors = errors
        self._once = LogOnce(log)
        self._aws = AwsImds(settings.aws_endpoint, clock, read_tags=settings.aws_instance_tags)

    async def _probe(self, name: str, session: aiohttp.ClientSession) -> Discovered:
        if name == "aws":
            return await self._aws.discover(session)
        if name == "gcp":
            return await discover_gcp(session, self._settings.gcp_endpoint)
        if name == "azure":
            return await discover_azure(session, self._settings.azure_endpoint)
        raise NotThisCloud(f"unknown metadata provider {name!r}")

    async def discover(self) -> Discovered | None:
        """The first provider's answer within `metadata.timeout`, or None when none answered."""
        providers = self._settings.providers
        if not providers:
            return None
        budget = self._settings.timeout_seconds
        timeout = aiohttp.ClientTimeout(total=budget, sock_connect=budget)
        # trust_env=False: metadata services are link-local and must bypass any HTTP proxy (Azure requires it).
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            tasks = {
                asyncio.create_task(self._probe(name, session), name=f"metadata-{name}"): name for name in providers
            }
            pending = set(tasks)
            winner: Discovered | None = None
            not_here: dict[str, str] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + budget
            try:
                while pending and winner is None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        winner = winner or self._outcome(tasks[task], task, not_here)
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        if winner is None:
            for task in pending:
                not_here.setdefault(tasks[task], f"no answer within {budget:g}s")
            self._report_none(not_here)
        else:
            self._once.forget("none")
        return winner

    def _outcome(self, name: str, task: asyncio.Task[Discovered], not_here: dict[str, str]) -> Discovered | None:
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, NotThisCloud):
            not_here[name] = str(exc)
        elif isinstance(exc, MetadataFailure):
            self._errors.add(COLLECTOR, exc.reason)
            self._once.log(f"{name}:{exc.reason}", logging.WARNING, "%s metadata: %s", name, exc)
        else:
            self._errors.add(COLLECTOR, "internal")
            log.warning("%s metadata lookup failed unexpectedly: %r", name, exc)
        return None

    def _report_none(self, not_here: dict[str, str]) -> None:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(not_here.items()))
        hint = ""
        if "aws" in not_here and "within" in not_here["aws"]:
            hint = (
                " On EC2 in a container (bridged pod networking), IMDSv2 needs HttpPutResponseHopLimit >= 2"
                " or hostNetwork; see docs/pricing.md."
            )
        self._once.log("none", logging.INFO, "no cloud metadata service answered (%s).%s", detail, hint)
