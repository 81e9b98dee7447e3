"""Table rows that the Markdown and HTML outputs share: findings and recommendations as text cells."""

from __future__ import annotations

from exporter.report.model import Report, rfc3339

FINDING_HEADER = ["kind", "instance", "device", "team", "since", "dollars", "per month", "evidence"]
RECOMMENDATION_HEADER = ["target", "action", "current", "proposed", "saves / month", "assumptions"]


def money(value: float | None) -> str:
    """Dollars for people: `$1,234.56`, or `n/a` when unpriced."""
    return "n/a" if value is None else f"${value:,.2f}"


def percent(value: float | None) -> str:
    """A 0-1 ratio as a percentage, or `n/a`."""
    return "n/a" if value is None else f"{100 * value:.1f} %"


def finding_rows(report: Report) -> list[list[str]]:
    """One row of cells per finding."""
    return [
        [
            f.kind,
            f.instance,
            f.device or "",
            f.team,
            rfc3339(f.since) or "",
            money(f.dollars),
            money(f.dollars_per_month),
            f.evidence,
        ]
        for f in report.findings
    ]


def recommendation_rows(report: Report) -> list[list[str]]:
    """One row of cells per recommendation."""
    return [
        [r.target, r.action, r.current, r.proposed, money(r.monthly_savings_dollars), r.assumptions]
        for r in report.recommendations
    ]
