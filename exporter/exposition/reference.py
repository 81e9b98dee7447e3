"""The metrics reference (docs/metrics.md), generated from the catalogue.

Run `python -m exporter.exposition.reference > docs/metrics.md` (or `make docs`); a test fails
when the committed file differs from what this prints.
"""

from __future__ import annotations

from exporter.catalogue import CATALOGUE

GROUP_TITLES = {
    "device": "Device identity, health and activity",
    "state": "States",
    "cost": "Money",
    "process": "Processes",
    "nvidia": "NVIDIA extras",
    "neuron": "AWS Neuron extras",
    "exporter": "The exporter itself",
}


def render_reference() -> str:
    """Markdown for every metric in the catalogue, grouped."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `exporter/catalogue.py` by `make docs`; do not edit by hand.",
        "",
        "Money is in US dollars (`dollars`), time in seconds, ratios 0-1. Per-device series carry",
        "`device` (`nvidia0`, `nvidia0-mig1`, `neuroncore3`); join identity from `accel_device_info`",
        "with `group_left`. States are `active`, `idle_held` and `idle_free`.",
        "",
    ]
    for group, title in GROUP_TITLES.items():
        specs = [s for s in CATALOGUE if s.group == group]
        if not specs:
            continue
        lines += [f"## {title}", "", "| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
        for s in specs:
            labels = ", ".join(f"`{label}`" for label in s.labels) or "—"
            text = s.help.replace("|", "\\|")
            lines.append(f"| `{s.name}` | {s.type} | {labels} | {text} |")
        lines.append("")
    lines += [
        "The exporter also serves the standard `process_*` metrics of its own process.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference(), end="")
