"""HTML output: one self-contained file (inline CSS and SVG, no script, nothing fetched at view time)."""

from __future__ import annotations

from html import escape

from exporter.report.model import Report, rfc3339
from exporter.report.rows import (
    FINDING_HEADER,
    RECOMMENDATION_HEADER,
    finding_rows,
    money,
    percent,
    recommendation_rows,
)

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#1d2433;background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccd;padding:4px 8px;text-align:left}
th{background:#eef}.partial{background:#fde2e2;border:1px solid #c33;padding:8px}
.kpi{display:inline-block;margin-right:24px;font-size:18px}.kpi b{display:block;font-size:26px}
"""
_SPEND, _WASTE = "#4a78c2", "#d9534f"


def _bars(rows: list[tuple[str, float, float]], width: int = 720) -> str:
    """Horizontal paired bars (spend, waste) per row, scaled to the largest spend."""
    if not rows:
        return "<p>No priced data.</p>"
    top = max(max(s, w) for _, s, w in rows) or 1.0
    label_w, bar_w, row_h = 200, width - 420, 30
    parts = [f'<svg width="{width}" height="{row_h * len(rows) + 20}">']
    for i, (name, spend, waste) in enumerate(rows):
        y = 10 + i * row_h
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(name[:32])}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{bar_w * spend / top:.1f}" height="11" fill="{_SPEND}"/>'
            f'<rect x="{label_w}" y="{y + 12}" width="{bar_w * waste / top:.1f}" height="11" fill="{_WASTE}"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 14}" font-size="12">{money(spend)} / {money(waste)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _heatmap(report: Report, max_hosts: int = 60, width: int = 900) -> str:
    """Utilization per host (rows) over the range (columns): pale 0 %, dark blue 100 %, grey no data."""
    hosts = [h.instance for h in report.hosts if h.instance in report.timeline.hosts][:max_hosts]
    if not hosts:
        return "<p>No utilization data.</p>"
    steps = max(len(v) for v in report.timeline.hosts.values())
    label_w, row_h = 220, 14
    cell = max(1.0, (width - label_w) / max(steps, 1))
    parts = [f'<svg width="{width}" height="{row_h * len(hosts) + 4}">']
    for row, instance in enumerate(hosts):
        y = row * row_h
        parts.append(f'<text x="0" y="{y + 11}" font-size="11">{escape(instance[:32])}</text>')
        for col, value in enumerate(report.timeline.hosts[instance]):
            if value is None:
                fill = "#bbb"
            else:
                level = max(0.0, min(1.0, value))
                shade = int(240 - 190 * level)
                fill = f"rgb({shade},{shade},250)"
            parts.append(
                f'<rect x="{label_w + col * cell:.1f}" y="{y}" width="{cell:.1f}" height="{row_h - 2}" fill="{fill}">'
                f"<title>{escape(instance)} step {col}: {percent(value)}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    """The report as one HTML page."""
    t = report.totals
    teams: dict[str, list[float]] = {}
    for m in report.teams:
        entry = teams.setdefault(m.team, [0.0, 0.0])
        entry[0] += m.spend_dollars
        entry[1] += m.waste_dollars
    team_rows = sorted(((k, v[0], v[1]) for k, v in teams.items()), key=lambda r: -r[2])
    host_rows = [(h.instance, h.spend_dollars or 0.0, h.waste_dollars or 0.0) for h in report.hosts if h.waste_dollars]
    host_rows = sorted(host_rows, key=lambda r: -r[2])[:15]
    partial = ""
    if report.partial:
        items = "".join(f"<li>{escape(p)}</li>" for p in report.problems)
        partial = f'<div class="partial"><b>PARTIAL REPORT</b>: some data is missing<ul>{items}</ul></div>'
    findings = _table(FINDING_HEADER, finding_rows(report))
    recommendations = _table(RECOMMENDATION_HEADER, recommendation_rows(report))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Accelerator waste audit</title>
<style>{_CSS}</style></head><body>
<h1>Accelerator waste audit</h1>
<p>{escape(rfc3339(t.start) or "")} to {escape(rfc3339(t.end) or "")}, {len(report.hosts)} hosts, from
{escape(report.source)} {escape(report.selector)}</p>
{partial}
<div><span class="kpi">spend<b>{money(t.spend_dollars)}</b></span><span class="kpi">idle<b>{money(t.idle_dollars)}</b></span>
<span class="kpi">waste<b>{money(t.waste_dollars)}</b></span></div>
<h2>Spend (blue) and waste (red) by team</h2>{_bars(team_rows)}
<h2>Top wasting hosts</h2>{_bars(host_rows)}
<h2>Utilization over the range, per host</h2>{_heatmap(report)}
<h2>Findings</h2>{findings}
<h2>Recommendations</h2>{recommendations}
</body></html>
"""
