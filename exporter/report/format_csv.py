"""CSV output: one row per host, then one per finding, with a `row` column saying which."""

from __future__ import annotations

import csv
import io

from exporter.report.model import Report, rfc3339

COLUMNS = (
    "row",
    "instance",
    "instance_type",
    "device",
    "teams",
    "devices",
    "price_source",
    "spend_dollars",
    "idle_dollars",
    "waste_dollars",
    "utilization_mean",
    "utilization_p95",
    "memory_used_peak_bytes",
    "kind",
    "since",
    "dollars",
    "dollars_per_month",
    "evidence",
    "partial",
)


def _cell(value: object) -> object:
    return "" if value is None else value


def render_csv(report: Report) -> str:
    """Hosts and findings as CSV; `partial` is 1 on every row of a partial report."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    partial = 1 if report.partial else 0
    for h in report.hosts:
        row: dict[str, object] = {
            "row": "host",
            "instance": h.instance,
            "instance_type": h.instance_type,
            "teams": ";".join(h.teams),
            "devices": h.devices,
            "price_source": h.price_source,
            "spend_dollars": h.spend_dollars,
            "idle_dollars": h.idle_dollars,
            "waste_dollars": h.waste_dollars,
            "utilization_mean": h.utilization_mean,
            "utilization_p95": h.utilization_p95,
            "memory_used_peak_bytes": h.memory_used_peak_bytes,
            "partial": partial,
        }
        writer.writerow({k: _cell(v) for k, v in row.items()})
    for f in report.findings:
        row = {
            "row": "finding",
            "instance": f.instance,
            "device": f.device,
            "teams": f.team,
            "kind": f.kind,
            "since": rfc3339(f.since),
            "dollars": f.dollars,
            "dollars_per_month": f.dollars_per_month,
            "evidence": f.evidence,
            "partial": partial,
        }
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()
