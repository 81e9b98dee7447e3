"""JSON output: the documented schema (docs/report.md)."""

from __future__ import annotations

import json

from exporter.report.model import Report, to_json_dict


def render_json(report: Report) -> str:
    """The report as indented JSON."""
    return json.dumps(to_json_dict(report), indent=2, sort_keys=False) + "\n"
