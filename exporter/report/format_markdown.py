"""Markdown output, the default: readable in a terminal, pasteable into a ticket."""

from __future__ import annotations

from exporter.report.model import Report, rfc3339
from exporter.report.rows import (
    FINDING_HEADER,
    RECOMMENDATION_HEADER,
    finding_rows,
    money,
    percent,
    recommendation_rows,
)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def clean(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: Report) -> str:
    """The report as Markdown."""
    t = report.totals
    lines = [
        "# Accelerator waste audit",
        "",
        f"{rfc3339(t.start)} to {rfc3339(t.end)} ({t.range_seconds / 86400:g} days), {len(report.hosts)} hosts, "
        f"from {report.source}" + (f" `{{{report.selector}}}`" if report.selector else ""),
        "",
    ]
    if report.partial:
        lines += ["**PARTIAL REPORT** — some data is missing:", ""]
        lines += [f"- {p}" for p in report.problems] + [""]
    lines += _table(
        ["spend", "idle", "waste"], [[money(t.spend_dollars), money(t.idle_dollars), money(t.waste_dollars)]]
    )
    lines += ["", "## Findings", ""]
    if report.findings:
        lines += _table(FINDING_HEADER, finding_rows(report))
    else:
        lines.append("None.")
    lines += ["", "## Recommendations", ""]
    if report.recommendations:
        lines += _table(RECOMMENDATION_HEADER, recommendation_rows(report))
        total = sum(r.monthly_savings_dollars for r in report.recommendations)
        lines += ["", f"Sum of the savings: {money(total)} a month (where two touch the same host, they overlap)."]
    else:
        lines.append("None.")
    lines += ["", "## Teams", ""]
    lines += _table(
        ["team", "workload", "spend", "idle", "waste"],
        [
            [m.team, m.workload, money(m.spend_dollars), money(m.idle_dollars), money(m.waste_dollars)]
            for m in report.teams
        ],
    )
    lines += ["", "## Hosts", ""]
    lines += _table(
        [
            "instance",
            "type",
            "teams",
            "devices",
            "price",
            "spend",
            "idle",
            "waste",
            "util mean",
            "util p95",
            "peak mem",
        ],
        [
            [
                h.instance,
                h.instance_type,
                ", ".join(h.teams),
                str(h.devices),
                h.price_source,
                money(h.spend_dollars),
                money(h.idle_dollars),
                money(h.waste_dollars),
                percent(h.utilization_mean),
                percent(h.utilization_p95),
                "n/a" if h.memory_used_peak_bytes is None else f"{h.memory_used_peak_bytes / 2**30:.1f} GiB",
            ]
            for h in report.hosts
        ],
    )
    return "\n".join(lines) + "\n"
