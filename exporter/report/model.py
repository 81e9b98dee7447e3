"""The report as frozen data: what every output format renders, and the JSON schema (v1)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1
FINDING_KINDS = ("idle_host", "abandoned", "held_idle", "underutilized", "long_running_unchecked", "unmonitored")
# A month, for projections: 30 days, as in the bundle's rules ("$/h x 720").
MONTH_SECONDS = 30 * 86400.0
MONTH_HOURS = 720.0


@dataclass(frozen=True)
class Totals:
    """Money over the range, summed over priced hosts."""

    spend_dollars: float
    idle_dollars: float
    waste_dollars: float
    range_seconds: float
    start: float
    end: float


@dataclass(frozen=True)
class Host:
    """One instance; money is None when the host has no price."""

    instance: str
    instance_type: str
    instance_id: str
    teams: tuple[str, ...]
    devices: int
    models: tuple[str, ...]
    price_source: str
    price_dollars_per_hour: float | None
    spend_dollars: float | None
    idle_dollars: float | None
    waste_dollars: float | None
    utilization_mean: float | None
    utilization_p95: float | None
    memory_used_peak_bytes: float | None


@dataclass(frozen=True)
class TeamMoney:
    """Money of one team and workload over the range."""

    team: str
    workload: str
    spend_dollars: float
    idle_dollars: float
    waste_dollars: float


@dataclass(frozen=True)
class Finding:
    """Something that costs money for no use; `since` is Unix seconds or None when unknown."""

    kind: str
    instance: str
    device: str | None
    team: str
    since: float | None
    dollars: float | None
    dollars_per_month: float | None
    evidence: str


@dataclass(frozen=True)
class Recommendation:
    """One action and what it saves per month; `target` is an instance or a group name."""

    target: str
    target_kind: str  # instance | group | device
    action: str
    current: str
    proposed: str
    monthly_savings_dollars: float
    assumptions: str


@dataclass(frozen=True)
class Timeline:
    """Per-host utilization (0-1, None where no data) at each step from `start`."""

    start: float
    step_seconds: float
    hosts: Mapping[str, tuple[float | None, ...]]


@dataclass(frozen=True)
class Report:
    """The whole audit."""

    source: str
    selector: str
    generated_at: float
    partial: bool
    problems: tuple[str, ...]
    totals: Totals
    hosts: tuple[Host, ...]
    teams: tuple[TeamMoney, ...]
    findings: tuple[Finding, ...]
    recommendations: tuple[Recommendation, ...]
    timeline: Timeline
    queries: int


def rfc3339(unix: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC (second precision)."""
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_json_dict(report: Report) -> dict[str, Any]:
    """The report as the documented JSON schema (docs/report.md)."""
    totals = asdict(report.totals)
    totals["start"] = rfc3339(report.totals.start)
    totals["end"] = rfc3339(report.totals.end)
    findings = []
    for finding in report.findings:
        item = asdict(finding)
        item["since"] = rfc3339(finding.since)
        if finding.device is None:
            del item["device"]
        findings.append(item)
    recommendations = []
    for rec in report.recommendations:
        item = asdict(rec)
        del item["target"], item["target_kind"]
        # The target first, under its kind: {"instance": ...}, {"group": ...} or {"device": ...}.
        recommendations.append({rec.target_kind: rec.target, **item})
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": rfc3339(report.generated_at),
        "source": {"url": report.source, "selector": report.selector, "queries": report.queries},
        "partial": report.partial,
        "problems": list(report.problems),
        "totals": totals,
        "hosts": [asdict(h) for h in report.hosts],
        "teams": [asdict(t) for t in report.teams],
        "findings": findings,
        "recommendations": recommendations,
        "utilization_timeline": {
            "start": rfc3339(report.timeline.start),
            "step_seconds": report.timeline.step_seconds,
            "hosts": {k: list(v) for k, v in report.timeline.hosts.items()},
        },
    }
