"""Generate the accel-cost-exporter Grafana dashboards (fleet-overview, host-detail, team-cost).

Run `python grafana/generate.py` after editing; it rewrites the committed JSON next to it
(`--check` only reports stale files, exit 1; `--help` for the options), and
tests/contract/test_dashboards_lint.py fails when the JSON and this script disagree. Plain dicts, no
dashboard SDK: the output is ordinary Grafana JSON (schemaVersion 39, Grafana >= 10.4), with the
data source as the `datasource` variable so file provisioning and the sidecar both work.

Why not grafana-foundation-sdk (Grafana's typed builders, Apache-2.0), evaluated with the
1769699796!10.4.0 wheel by rebuilding host-detail with its builders, reusing this file's PromQL
helpers, until the JSON matched ours panel for panel (same titles, queries, refIds, uids, grid
positions and ids) and passed every check of tests/contract/test_dashboards_lint.py that reads the JSON:
- Barely shorter, and not where the length is. Formatted by ruff at 120 columns, host-detail's
  panels take 305 lines with the builders against 300 here: every chained setter gets its own
  line. Only the framework shrinks: 229 lines (52 of imports, 115 of wrappers and patches, 61 of
  dashboard setup) against 308 here, which also track the price-free queries (about 25 more
  lines the prototype would need). Over the whole file: about 55 lines of 1,230 (under 5 %).
- It cannot express what the lint requires, so 21 lines patched the encoded JSON afterwards:
  `"id": null` (to_json drops a None id), schemaVersion (fixed at 36 by both the 10.1 and 10.4
  builders, no setter), the query variables' `definition`, the Prometheus annotation fields
  (titleFormat, textFormat, tagKeys, step, useValueForTime: AnnotationQuery has none of them)
  and panel ids. Our `Target.needs_price` bookkeeping (unpriced hosts) has no place in it either.
- It changes the output without being asked: stat panels gain wideLayout and showPercentChange,
  tables frameIndex, showTypeIcons and a different footer, the datasource variable auto,
  auto_min and auto_count, data links seven dashboard-link fields, the annotation
  builtIn; the empty timepicker goes.
- Dependency cost: it requires Python >= 3.11 (typing.Self, enum.StrEnum) while we support 3.10,
  so `pip install -e '.[test]'` would fail there; versions carry a timestamp epoch and the
  newest epoch is the Grafana 10.1 build, so only an exact pin with the epoch gets 10.4; it is
  marked alpha; 4.9 MB installed (54,000 lines of generated code), no dependencies of its own.
What it does well: builders are typed, so mypy catches a misspelt option; not enough to pay for
the rest while the lint test already checks what the dashboards must contain.

Every query is filtered by the chained variables job -> instance -> device and by team. Series
without a `team` label (device gauges) are restricted to the selected teams by TEAM_JOIN, which
must not need a price: hosts with `price_source="none"` have no cost series, and only the money
panels may go blank for them. A device's team shows on its cost counters (priced hosts) and on
accel_process_info (any host); an unpriced device that no process holds has no team anywhere, so
it is kept only when every team is selected. That is why the team variable's "All" value is ".*"
(not ".+"): `team=~".*"` also matches the absent `team` label of accel_device_up.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 39
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
TAG = "accel-cost-exporter"
XIDS_CRITICAL = "48|62|64|74|79|95|119|120"

# Label matchers, one per variable, for series with the matching labels.
F_INST = 'job=~"$job",instance=~"$instance"'
F_DEV = F_INST + ',device=~"$device"'
F_TEAM = F_DEV + ',team=~"$team"'
# Restrict a device-level vector (no `team` label) to the devices of the selected teams; see the
# module docstring for why the last term keeps unowned unpriced devices under "All" only.
TEAM_JOIN = (
    "and on (job, instance, device) (\n"
    f"  accel_cost_dollars_total{{{F_TEAM}}}\n"
    f"  or accel_process_info{{{F_TEAM}}}\n"
    f'  or accel_device_up{{{F_DEV},team=~"$team"}}\n'
    ")"
)
TEAM_ALL = ".*"
RI = "$__rate_interval"
# What every series shows when nothing says which team owns a device (unpriced, no process).
NO_OWNER = "unknown"
# Rightsizing: accelerators are sized so that the p95 busy load runs at this utilization.
RIGHTSIZE_TARGET = 0.7
HOURS_PER_MONTH = 720  # 30 days, as the other monthly projections
# A query needs a price when it reads a money series outside TEAM_JOIN (see `needs_price`).
MONEY_RE = re.compile(r"accel_\w*(?:dollars|cost_share)\w*")
ALERTS_SELECTOR = 'ALERTS{alertstate="firing",alertname=~"Accelerator.*",job=~"$job"'
TEAM_ALERTS = ',team=~"$team"'  # fleet and team alerts carry no instance; "All" (.*) keeps team-less ones
HOST_ALERTS = ',instance=~"$instance"'
UIDS = {"fleet": "accel-fleet-overview", "host": "accel-host-detail", "team": "accel-team-cost"}

Json = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One query of a panel; `priced` overrides `needs_price` for queries with a price-free branch.

    `gpm`: the query reads NVML GPM series, which only Hopper and later GPUs have; it returns data
    on GPM-capable hosts only, priced or not (see `gpm_queries`).
    """

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    priced: bool | None = None
    gpm: bool = False

    @property
    def needs_price(self) -> bool:
        """Whether the query may return nothing for a host with price_source="none"."""
        if self.priced is not None:
            return self.priced
        return bool(MONEY_RE.search(self.expr.replace(TEAM_JOIN, "")))


@dataclass
class Panel:
    """A panel before layout; `build` turns it into Grafana JSON."""

    type: str
    title: str
    description: str
    unit: str
    targets: list[Target]
    w: int = 12
    h: int = 8
    options: Json = field(default_factory=dict)
    custom: Json = field(default_factory=dict)
    defaults: Json = field(default_factory=dict)
    overrides: list[Json] = field(default_factory=list)
    transformations: list[Json] = field(default_factory=list)


@dataclass
class Row:
    """A row; collapsed rows hold their panels inside, as Grafana stores them."""

    title: str
    panels: list[Panel]
    collapsed: bool = False


def _target(t: Target, ref: str) -> Json:
    out: Json = {
        "datasource": DS,
        "refId": ref,
        "expr": t.expr,
        "legendFormat": t.legend or "__auto",
        "range": not t.instant,
        "instant": t.instant,
    }
    if t.table:
        out["format"] = "table"
    return out


def thresholds(*above: tuple[str, float]) -> Json:
    """Absolute thresholds: green below the first bound, then each (color, lower bound) in order."""
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}, *({"color": c, "value": v} for c, v in above)],
    }


def _defaults_for(p: Panel) -> Json:
    base: Json = {"unit": p.unit, "color": {"mode": "palette-classic" if p.type == "timeseries" else "thresholds"}}
    base["thresholds"] = thresholds()
    if p.type == "timeseries":
        custom: Json = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "none", "group": "A"},
        }
        custom.update(p.custom)
        base["custom"] = custom
    elif p.custom:
        base["custom"] = dict(p.custom)
    base.update(p.defaults)
    return base


def _options_for(p: Panel) -> Json:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    opts: Json
    if p.type == "stat":
        opts = {
            "reduceOptions": reduce,
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    elif p.type == "bargauge":
        opts = {
            "reduceOptions": reduce,
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
            "valueMode": "color",
        }
    elif p.type == "table":
        opts = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    else:
        opts = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["mean", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    opts.update(p.options)
    return opts


class Layout:
    """Places panels left to right on Grafana's 24-column grid and numbers them."""

    def __init__(self) -> None:
        self.price_free: list[str] = []  # expressions that must return data for an unpriced host
        self.gpm: list[str] = []  # expressions with data only on GPM-capable hosts
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w: int, h: int) -> Json:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def panel(self, p: Panel) -> Json:
        pid = self.next_id
        self.next_id += 1
        self.price_free.extend(t.expr for t in p.targets if not t.needs_price and not t.gpm)
        self.gpm.extend(t.expr for t in p.targets if t.gpm)
        out: Json = {
            "id": pid,
            "type": p.type,
            "title": p.title,
            "description": p.description,
            "datasource": DS,
            "gridPos": self._place(p.w, p.h),
            "fieldConfig": {"defaults": _defaults_for(p), "overrides": p.overrides},
            "options": _options_for(p),
            "targets": [_target(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
        }
        if p.transformations:
            out["transformations"] = p.transformations
        return out

    def row(self, r: Row) -> list[Json]:
        self._newline()
        pid = self.next_id
        self.next_id += 1
        head: Json = {
            "id": pid,
            "type": "row",
            "title": r.title,
            "collapsed": r.collapsed,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            "panels": [],
        }
        self.y += 1
        inner = [self.panel(p) for p in r.panels]
        self._newline()
        if r.collapsed:
            head["panels"] = inner
            return [head]
        return [head, *inner]


def _query_var(name: str, label: str, query: str, all_value: str = ".+") -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable-query"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": all_value,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "regex": "",
        "skipUrlSync": False,
        "options": [],
    }


def templating() -> Json:
    """The data source variable and the chained job -> instance -> device and team variables."""
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
                "skipUrlSync": False,
                "options": [],
            },
            _query_var("job", "Job", "label_values(accel_device_info, job)"),
            _query_var("instance", "Instance", 'label_values(accel_device_info{job=~"$job"}, instance)'),
            _query_var(
                "device", "Device", 'label_values(accel_device_info{job=~"$job",instance=~"$instance"}, device)'
            ),
            # Teams from the cost counters and from the processes: an unpriced host has no cost series.
            _query_var(
                "team",
                "Team",
                'label_values({__name__=~"accel_cost_dollars_total|accel_process_info",'
                'job=~"$job",instance=~"$instance"}, team)',
                all_value=TEAM_ALL,
            ),
        ]
    }


@dataclass(frozen=True)
class Built:
    """A generated dashboard and the expressions of it that must not need a price."""

    json: Json
    price_free: tuple[str, ...]
    gpm: tuple[str, ...] = ()


def dashboard_links(uid: str) -> list[Json]:
    """Links to the two other dashboards, carrying the data source, job, instance, team and time."""
    names = {UIDS["fleet"]: "Fleet overview", UIDS["host"]: "Host detail", UIDS["team"]: "Team cost"}
    return [
        {
            "title": title,
            "type": "link",
            "url": dashboard_url(other),
            "tags": [],
            "asDropdown": False,
            "includeVars": False,
            "keepTime": True,
            "icon": "dashboard",
            "targetBlank": False,
            "tooltip": f"Open {title} with the same data source, job, instance and team",
        }
        for other, title in names.items()
        if other != uid
    ]


def dashboard_url(uid: str, instance: str = "${instance:queryparam}", team: str = "${team:queryparam}") -> str:
    """A relative link to dashboard `uid` keeping $datasource and $job; instance and team as given."""
    return f"/d/{uid}?${{datasource:queryparam}}&${{job:queryparam}}&{instance}&{team}"


def data_link(uid: str, title: str, instance: str = "", team: str = "") -> Json:
    """A panel data link to `uid` for the clicked series: `instance`/`team` are the value expressions."""
    url = dashboard_url(
        uid,
        f"var-instance={instance}" if instance else "${instance:queryparam}",
        f"var-team={team}" if team else "${team:queryparam}",
    )
    return {"title": title, "url": url + "&${__url_time_range}", "targetBlank": False}


def alert_annotations(extra: str = "") -> Json:
    """The dashboard annotations: firing Accelerator* alerts (Prometheus ALERTS), `extra` adding matchers."""
    return {
        "list": [
            {
                "name": "Accelerator alerts",
                "datasource": DS,
                "enable": True,
                "hide": False,
                "iconColor": "red",
                "expr": f"{ALERTS_SELECTOR}{extra}}}",
                "step": "60s",
                "titleFormat": "{{alertname}}",
                "textFormat": "{{severity}} {{team}} {{instance}} {{device}}",
                "tagKeys": "alertname,severity,team",
                "useValueForTime": False,
            }
        ]
    }


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row], alerts_filter: str = "") -> Built:
    """A complete dashboard with the shared variables, links and settings."""
    layout = Layout()
    panels: list[Json] = []
    for item in items:
        if isinstance(item, Row):
            panels.extend(layout.row(item))
        else:
            panels.append(layout.panel(item))
    out: Json = {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": [TAG, "cost", "accelerator"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": alert_annotations(alerts_filter),
        "links": dashboard_links(uid),
        "templating": templating(),
        "panels": panels,
    }
    return Built(out, tuple(layout.price_free), tuple(layout.gpm))


# --- shared queries ------------------------------------------------------------------------------


def rate_sum(metric: str, by: str = "", filt: str = F_TEAM) -> str:
    """sum [by (...)] of rate(metric) per hour ($/h for a dollars counter)."""
    by_clause = f" by ({by})" if by else ""
    return f"sum{by_clause} (rate({metric}{{{filt}}}[{RI}])) * 3600"


def period_sum(metric: str, by: str = "", filt: str = F_TEAM) -> str:
    """sum [by (...)] of increase(metric) over the dashboard's time range."""
    by_clause = f" by ({by})" if by else ""
    return f"sum{by_clause} (increase({metric}{{{filt}}}[$__range]))"


def utilization(by: str = "") -> str:
    """Busy device-seconds over device count: sum / count, never an average of ratios."""
    by_clause = f" by ({by})" if by else ""
    return (
        f"sum{by_clause} (rate(accel_busy_seconds_total{{{F_DEV}}}[{RI}]) {TEAM_JOIN})\n"
        f"/\ncount{by_clause} (accel_busy_seconds_total{{{F_DEV}}} {TEAM_JOIN})"
    )


def idle_devices(by: str = "") -> str:
    by_clause = f" by ({by})" if by else ""
    return f'sum{by_clause} (accel_state{{{F_DEV},state=~"idle_held|idle_free"}} {TEAM_JOIN})'


def effective_price_by_model() -> str:
    """Dollars spent per busy accelerator-hour, per model, over the time range."""
    info = f"accel_device_info{{{F_DEV}}}"
    return (
        "sum by (model) (\n"
        f"  increase(accel_cost_dollars_total{{{F_TEAM}}}[$__range])\n"
        f"  * on (job, instance, device) group_left (model) {info}\n"
        ")\n/\n(\n"
        "  sum by (model) (\n"
        f"    (increase(accel_busy_seconds_total{{{F_DEV}}}[$__range]) {TEAM_JOIN})\n"
        f"    * on (job, instance, device) group_left (model) {info}\n"
        "  ) / 3600 > 0\n)"
    )


def _memory_by_team() -> str:
    """Device memory held per (device, team), from the processes (exists without a price)."""
    return (
        f"sum by (job, instance, device, team) (\n"
        f"    accel_process_memory_used_bytes{{{F_DEV}}}\n"
        f"    * on (job, instance, device, pid) group_left (team) accel_process_info{{{F_TEAM}}}\n"
        f"  )"
    )


def team_share() -> str:
    """Each device's share (0-1] per team: of its cost where priced, else of the memory its processes hold."""
    return (
        "(\n"
        f"  device_team:accel_cost_share:ratio_rate5m{{{F_TEAM}}}\n"
        "  or on (job, instance, device) (\n"
        f"  {_memory_by_team()}\n"
        "  / on (job, instance, device) group_left ()\n"
        f"  (sum by (job, instance, device) (accel_process_memory_used_bytes{{{F_DEV}}}) > 0)\n"
        f"  unless on (job, instance, device) accel_price_dollars_per_hour{{{F_DEV}}}\n"
        "  )\n"
        ")"
    )


def device_owner() -> str:
    """One series per device naming its team: the owner rule where priced, else the team of the process
    holding most memory, else NO_OWNER (unpriced and unheld: kept under "All" only, see TEAM_JOIN)."""
    return (
        "(\n"
        f'  device_team:accel_owner:info{{{F_TEAM},team!=""}}\n'
        "  or on (job, instance, device)\n"
        f"  (topk by (job, instance, device) (1, {_memory_by_team()}) * 0 + 1)\n"
        "  or on (job, instance, device)\n"
        f'  label_replace(accel_device_up{{{F_DEV},team=~"$team"}} * 0 + 1, "team", "{NO_OWNER}", "", "")\n'
        ")"
    )


PROCESS_LABELS = "team, workload, user, command, unit, pod, namespace"


def processes_table(w: int = 24) -> Panel:
    info = f"accel_process_info{{{F_TEAM}}}"
    join = f"* on (job, instance, device, pid) group_left ({PROCESS_LABELS}) {info}"
    return Panel(
        "table",
        "Long-running processes (oldest first)",
        "Processes holding an accelerator, oldest first: age (from accel_process_start_time_seconds), owning "
        "team and user, device memory held, and the device's utilization. Old processes on idle devices are "
        "the abandoned-job pattern (AcceleratorAbandoned, AcceleratorLongRunningLowUtilization).",
        "s",
        [
            Target(
                f"sort_desc(\n  (time() - accel_process_start_time_seconds{{{F_DEV}}})\n  {join}\n)",
                instant=True,
                table=True,
            ),
            Target(f"accel_process_memory_used_bytes{{{F_DEV}}}\n{join}", instant=True, table=True),
            Target(
                f"rate(accel_busy_seconds_total{{{F_DEV}}}[{RI}])\n"
                "+ on (job, instance, device) group_right ()\n"
                f"(0 * accel_process_start_time_seconds{{{F_DEV}}}\n{join})",
                instant=True,
                table=True,
            ),
        ],
        w=w,
        h=9,
        defaults={"links": [to_host("${__data.fields.instance}"), to_team("${__data.fields.team}")]},
        overrides=[
            {"matcher": {"id": "byName", "options": "Memory held"}, "properties": [{"id": "unit", "value": "bytes"}]},
            {
                "matcher": {"id": "byName", "options": "Device utilization"},
                "properties": [{"id": "unit", "value": "percentunit"}],
            },
        ],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True, "workload": True, "namespace": True},
                    "indexByName": {
                        "instance": 0,
                        "device": 1,
                        "pid": 2,
                        "team": 3,
                        "user": 4,
                        "command": 5,
                        "Value #A": 6,
                        "Value #B": 7,
                        "Value #C": 8,
                    },
                    "renameByName": {"Value #A": "Age", "Value #B": "Memory held", "Value #C": "Device utilization"},
                },
            },
            {"id": "sortBy", "options": {"sort": [{"field": "Age", "desc": True}]}},
        ],
    )


def stat(
    title: str, description: str, unit: str, expr: str, instant: bool = False, w: int = 4, **defaults: Any
) -> Panel:
    return Panel("stat", title, description, unit, [Target(expr, instant=instant)], w=w, h=4, defaults=defaults)


def money_series(
    title: str,
    description: str,
    targets: list[Target],
    stacked: bool = False,
    w: int = 12,
    links: list[Json] | None = None,
) -> Panel:
    custom: Json = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30} if stacked else {}
    defaults: Json = {"links": links} if links else {}
    return Panel("timeseries", title, description, "currencyUSD", targets, w=w, custom=custom, defaults=defaults)


def effective_price_panel() -> Panel:
    return Panel(
        "bargauge",
        "Effective $ per busy accelerator-hour, by model",
        "Spend divided by busy hours over the time range, per accelerator model (model from accel_device_info, "
        "joined with group_left). Compare with the list price per device-hour: the ratio is what idle time "
        "really costs.",
        "currencyUSD",
        [Target(effective_price_by_model(), legend="{{model}}", instant=True)],
    )


GPM_NOTE = (
    "Only GPUs with NVML GPM (Hopper and later: H100, H200, B200) have SM and tensor activity; hosts with "
    "older GPUs (A100, L4) or NeuronCores show nothing here, and neither does a host while DCGM profiling "
    "holds the GPM counters (docs/gpm.md)."
)
GPM_DEVICES = f"accel_sm_active_seconds_total{{{F_DEV}}}"


def activity_panel() -> Panel:
    """Host detail: each GPM device's busy fraction beside its SM and tensor activity and occupancy."""
    legend = "{{instance}} {{device}}"
    return Panel(
        "timeseries",
        "Utilization, SM and tensor activity",
        "Per GPU: utilization (kernel time, rate of accel_busy_seconds_total) beside SM activity (share of SMs "
        "busy, rate of accel_sm_active_seconds_total), tensor activity (accel_tensor_active_seconds_total) and "
        "SM occupancy (accel_sm_occupancy_ratio). A kernel on a few SMs reads 100 % utilization and a few % SM "
        "activity: over 50 % busy with under 10 % SM activity for an hour fires AcceleratorBusyWithoutSmActivity. "
        + GPM_NOTE,
        "percentunit",
        [
            Target(
                f"rate(accel_busy_seconds_total{{{F_DEV}}}[{RI}])\nand on (job, instance, device) {GPM_DEVICES}\n"
                + TEAM_JOIN,
                legend=f"{legend} utilization",
                gpm=True,
            ),
            Target(
                f"rate(accel_sm_active_seconds_total{{{F_DEV}}}[{RI}]) {TEAM_JOIN}", legend=f"{legend} SM", gpm=True
            ),
            Target(
                f"rate(accel_tensor_active_seconds_total{{{F_DEV}}}[{RI}]) {TEAM_JOIN}",
                legend=f"{legend} tensor",
                gpm=True,
            ),
            Target(f"accel_sm_occupancy_ratio{{{F_DEV}}} {TEAM_JOIN}", legend=f"{legend} occupancy", gpm=True),
        ],
        defaults={"min": 0, "max": 1},
    )


def waste_basis_table() -> Panel:
    """Host detail: what each priced device's waste is measured on (accel_waste_basis_info)."""
    return Panel(
        "table",
        "Waste basis per device",
        "What each priced device's waste (accel_waste_dollars_total) is measured on, from accel_waste_basis_info: "
        "time (utilization, kernel time) or sm (SM activity through GPM, with accounting.waste_basis: sm on a GPU "
        "that has GPM). A device spinning one small kernel wastes nothing on time and most of its price on sm.",
        "short",
        [Target(f"accel_waste_basis_info{{{F_DEV}}} {TEAM_JOIN}", instant=True, table=True, priced=True)],
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                    "indexByName": {"instance": 0, "device": 1, "basis": 2},
                },
            }
        ],
    )


def gpm_by_model(counter: str) -> str:
    """Mean rate of `counter` per GPU model over the GPM-capable whole GPUs (sum over count)."""
    info = f'accel_device_info{{{F_DEV},kind="gpu"}}'
    rate = f"rate({counter}{{{F_DEV}}}[{RI}])"
    if counter != "accel_sm_active_seconds_total":
        rate = f"({rate} and on (job, instance, device) {GPM_DEVICES})"
    return (
        "sum by (model) (\n"
        f"  ({rate} {TEAM_JOIN})\n"
        f"  * on (job, instance, device) group_left (model) {info}\n"
        ")\n/\n"
        "count by (model) (\n"
        f"  ({GPM_DEVICES} {TEAM_JOIN})\n"
        f"  * on (job, instance, device) group_left (model) {info}\n"
        ")"
    )


def kernel_time_vs_sm_panel() -> Panel:
    """Fleet overview: per GPU model, utilization of the GPM-capable GPUs beside their SM activity."""
    return Panel(
        "timeseries",
        "Kernel time vs SM activity (GPM-capable models)",
        "Per GPU model, over the selected GPUs that have GPM: mean utilization (kernel time, "
        "accel_busy_seconds_total) and mean SM activity (accel_sm_active_seconds_total), each a sum over the "
        "device count. A wide gap is GPUs held by kernels that use few SMs (small batches, polling kernels); "
        "host detail shows which device. MIG instances are left out (their share of the GPU differs). " + GPM_NOTE,
        "percentunit",
        [
            Target(gpm_by_model("accel_busy_seconds_total"), legend="{{model}} utilization", gpm=True),
            Target(gpm_by_model("accel_sm_active_seconds_total"), legend="{{model}} SM activity", gpm=True),
        ],
        defaults={"min": 0, "max": 1},
    )


STATE_MAPPINGS: list[Json] = [
    {
        "type": "value",
        "options": {
            "0": {"text": "idle_free", "color": "red", "index": 0},
            "1": {"text": "idle_held", "color": "orange", "index": 1},
            "2": {"text": "active", "color": "green", "index": 2},
        },
    }
]


def state_timeline() -> Panel:
    return Panel(
        "timeseries",
        "Device state timeline",
        "Each device's state over time, from accel_state: 2 = active, 1 = idle_held (a process holds memory, "
        "no work), 0 = idle_free (no process).",
        "short",
        [
            Target(
                f'max by (instance, device) (accel_state{{{F_DEV},state="active"}} {TEAM_JOIN}) * 2\n'
                f'+ max by (instance, device) (accel_state{{{F_DEV},state="idle_held"}} {TEAM_JOIN})',
                legend="{{instance}} {{device}}",
            )
        ],
        custom={"lineInterpolation": "stepAfter", "fillOpacity": 0},
        defaults={"min": 0, "max": 2, "decimals": 0, "mappings": STATE_MAPPINGS},
    )


def exporter_health_row() -> Row:
    return Row(
        "Exporter health",
        [
            Panel(
                "timeseries",
                "Collector success",
                "accel_exporter_collector_success per collector: 1 when the last poll succeeded. A collector at 0 "
                "for 10 minutes fires AcceleratorExporterCollectorFailing.",
                "short",
                [Target(f"accel_exporter_collector_success{{{F_INST}}}", legend="{{instance}} {{collector}}")],
                w=8,
                defaults={"min": 0, "max": 1},
            ),
            Panel(
                "timeseries",
                "Time since last sample",
                "Age of each collector's last successful sample; over 300 s fires AcceleratorExporterStale.",
                "s",
                [
                    Target(
                        f"time() - (accel_exporter_last_sample_timestamp_seconds{{{F_INST}}} > 0)",
                        legend="{{instance}} {{collector}}",
                    )
                ],
                w=8,
            ),
            Panel(
                "timeseries",
                "Collector poll duration",
                "How long each collector's last poll took (accel_exporter_collector_duration_seconds).",
                "s",
                [Target(f"accel_exporter_collector_duration_seconds{{{F_INST}}}", legend="{{instance}} {{collector}}")],
                w=8,
            ),
        ],
        collapsed=True,
    )


def to_host(field: str = "${__field.labels.instance}") -> Json:
    """Data link from a per-host series (or table row, with `${__data.fields.instance}`) to host detail."""
    return data_link(UIDS["host"], f"Host detail for {field}", instance=field)


def to_team(field: str = "${__field.labels.team}") -> Json:
    """Data link from a per-team series (or table row) to the team cost dashboard for that team."""
    return data_link(UIDS["team"], f"Team cost for {field}", team=field)


def with_instance_type(expr: str) -> str:
    """Add the host's instance_type (from accel_instance_info) to a vector keyed by job and instance."""
    return f"{expr}\n* on (job, instance) group_left (instance_type) accel_instance_info{{{F_INST}}}"


CARBON = "accel_carbon_grams_total"
# Carbon is shown in kg CO2e: a GPU at 400 W on a 400 g/kWh grid emits about 0.16 kg per hour.
KG = "masskg"


def carbon_rate(by: str = "") -> str:
    """sum [by (...)] of the carbon rate in kg CO2e per hour."""
    return f"{rate_sum(CARBON, by)} / 1000"


def carbon_period(by: str = "") -> str:
    """sum [by (...)] of the carbon emitted over the time range, in kg CO2e."""
    return f"{period_sum(CARBON, by)} / 1000"


def by_price_source(metric: str) -> str:
    """Hourly rate of a dollars counter per price source of its host (owned, aws-pricing-api, builtin, ...)."""
    return (
        "sum by (price_source) (\n"
        f"  rate({metric}{{{F_TEAM}}}[{RI}])\n"
        f"  * on (job, instance) group_left (price_source) accel_instance_info{{{F_INST}}}\n"
        ") * 3600"
    )


def price_source_panel() -> Panel:
    return money_series(
        "Spend and waste by price source ($/h)",
        "Owned and cloud hosts side by side: hourly spend and utilization-weighted waste split by where each "
        "host's price came from (price_source of accel_instance_info): owned (amortized purchase, overhead "
        "and electricity, pricing.owned), config, aws-pricing-api, aws-spot or builtin. Hosts without a price "
        "(none) have no money and are not in it.",
        [
            Target(by_price_source("accel_cost_dollars_total"), legend="{{price_source}} spend"),
            Target(by_price_source("accel_waste_dollars_total"), legend="{{price_source}} waste"),
        ],
    )


def hosts_table() -> Panel:
    """Every host with its price source, devices, utilization, spend and carbon: owned and cloud together."""
    by = "job, instance"
    info = f"accel_instance_info{{{F_INST}}}"
    devices = f"count by ({by}) (accel_device_up{{{F_DEV}}} {TEAM_JOIN})"
    return Panel(
        "table",
        "Hosts: price source, spend and carbon now",
        "Each host with its instance type and where its price came from (price_source: owned, config, "
        "aws-pricing-api, aws-spot, builtin or none), its accelerators, utilization, spend per hour and carbon "
        "in kg CO2e per hour (accel_carbon_grams_total). Hosts without a price show no spend; hosts whose grid "
        "intensity is unknown show no carbon. Click a row for the host's detail.",
        "short",
        [
            Target(f"{devices}\n* on ({by}) group_left (instance_type, price_source) {info}", instant=True, table=True),
            Target(utilization(by), instant=True, table=True),
            Target(rate_sum("accel_cost_dollars_total", by), instant=True, table=True),
            Target(carbon_rate(by), instant=True, table=True),
        ],
        w=24,
        h=8,
        defaults={"links": [to_host("${__data.fields.instance}")]},
        overrides=[
            _column_unit("Utilization", "percentunit"),
            _column_unit("Spend ($/h)", "currencyUSD"),
            _column_unit("Carbon (kg CO2e/h)", KG),
        ],
        transformations=host_table_transformations(
            {"instance": 0, "instance_type": 1, "price_source": 2, "Value #A": 3},
            {
                "price_source": "Price source",
                "Value #A": "Accelerators",
                "Value #B": "Utilization",
                "Value #C": "Spend ($/h)",
                "Value #D": "Carbon (kg CO2e/h)",
            },
            "Spend ($/h)",
        ),
    )


def _column_unit(column: str, unit: str) -> Json:
    return {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "unit", "value": unit}]}


def host_table_transformations(index: dict[str, int], rename: dict[str, str], sort_by: str) -> list[Json]:
    """Merge a table's instant queries into one row per key, hide Time and job, order, rename, sort descending."""
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {"excludeByName": {"Time": True, "job": True}, "indexByName": index, "renameByName": rename},
        },
        {"id": "sortBy", "options": {"sort": [{"field": sort_by, "desc": True}]}},
    ]


def waste_table() -> Panel:
    by = "job, team, instance"
    cost, idle, waste = "accel_cost_dollars_total", "accel_idle_cost_dollars_total", "accel_waste_dollars_total"
    return Panel(
        "table",
        "Waste by team, host and instance type (time range)",
        "Over the dashboard's time range, per team on each host: utilization-weighted waste "
        "(accel_waste_dollars_total), idle spend and spend, with the host's instance type from "
        "accel_instance_info. Sorted by waste, the money not turned into work at the target utilization. "
        "Hosts without a price (price_source none) have no money and are not listed; see AcceleratorPriceUnknown.",
        "currencyUSD",
        [
            Target(f"sort_desc(\n{with_instance_type(period_sum(waste, by))}\n)", instant=True, table=True),
            Target(with_instance_type(period_sum(idle, by)), instant=True, table=True),
            Target(with_instance_type(period_sum(cost, by)), instant=True, table=True),
        ],
        w=24,
        h=9,
        defaults={"links": [to_host("${__data.fields.instance}"), to_team("${__data.fields.team}")]},
        transformations=host_table_transformations(
            {"team": 0, "instance": 1, "instance_type": 2, "Value #A": 3},
            {"Value #A": "Waste", "Value #B": "Idle spend", "Value #C": "Spend"},
            "Waste",
        ),
    )


def host_bars(title: str, description: str, expr: str) -> Panel:
    """Bars of a per-instance money figure, each linking to that host's detail."""
    return Panel(
        "bargauge",
        title,
        description,
        "currencyUSD",
        [Target(expr, legend="{{instance}}", instant=True)],
        defaults={"links": [to_host()]},
    )


def idle_spend_by_host() -> Panel:
    return host_bars(
        "Idle spend by host (time range)",
        "Money each host spent on idle accelerators (idle_held + idle_free) over the dashboard's time range, "
        "most first. Click a bar for the host's detail.",
        f"sort_desc({period_sum('accel_idle_cost_dollars_total', 'instance')})",
    )


def rightsizing() -> Panel:
    held = f"instance:accel_devices:count{{{F_INST}}}"
    p95 = f"quantile_over_time(0.95, instance:accel_busy_seconds:rate5m{{{F_INST}}}[$__range])"
    needed = f"ceil({p95} / {RIGHTSIZE_TARGET})"
    price_each = f"(accel_instance_price_dollars_per_hour{{{F_INST}}} / on (job, instance) {held})"
    savings = f"clamp_min({held} - {needed}, 0)\n* on (job, instance) {price_each}\n* {HOURS_PER_MONTH}"
    pct = f"{RIGHTSIZE_TARGET:.0%}".replace("%", " %")
    return Panel(
        "table",
        f"What rightsizing would save (time range, {pct} target)",
        f"Per host, over the time range: accelerators held (instance:accel_devices:count), the p95 of busy "
        f"device-equivalents (instance:accel_busy_seconds:rate5m), the accelerators that p95 load needs at "
        f"{pct} utilization (ceil(p95 / {RIGHTSIZE_TARGET})), and what the rest would save per 30-day month at "
        f"the host's price per accelerator (instance price / accelerators held). Whole hosts, so the Job "
        f"and Instance variables apply, not Device or Team; hosts without a price show no saving.",
        "short",
        [
            Target(with_instance_type(held), instant=True, table=True),
            Target(with_instance_type(p95), instant=True, table=True),
            Target(with_instance_type(needed), instant=True, table=True),
            Target(f"sort_desc(\n{with_instance_type(savings)}\n)", instant=True, table=True),
        ],
        w=24,
        h=9,
        defaults={"links": [to_host("${__data.fields.instance}")]},
        overrides=[
            {
                "matcher": {"id": "byName", "options": "Saving per month"},
                "properties": [{"id": "unit", "value": "currencyUSD"}],
            },
            {"matcher": {"id": "byName", "options": "p95 busy"}, "properties": [{"id": "decimals", "value": 2}]},
        ],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "job": True},
                    "indexByName": {"instance": 0, "instance_type": 1},
                    "renameByName": {
                        "Value #A": "Accelerators held",
                        "Value #B": "p95 busy",
                        "Value #C": f"Needed at {pct}",
                        "Value #D": "Saving per month",
                    },
                },
            },
            {"id": "sortBy", "options": {"sort": [{"field": "Saving per month", "desc": True}]}},
        ],
    )


def firing_alerts(extra: str, w: int = 24) -> Panel:
    """Table of the firing Accelerator* alerts (Prometheus ALERTS), `extra` adding label matchers."""
    return Panel(
        "table",
        "Firing accelerator alerts",
        "Accelerator* alerts firing now (Prometheus' ALERTS series), with their team, host and device. The same "
        "alerts show as red annotations on the time series panels; docs/runbook.md says what to do for each.",
        "short",
        [Target(f"{ALERTS_SELECTOR}{extra}}}", instant=True, table=True)],
        w=w,
        h=6,
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True, "alertstate": True},
                    "indexByName": {"alertname": 0, "severity": 1, "team": 2, "instance": 3, "device": 4},
                },
            }
        ],
    )


# --- the three dashboards ------------------------------------------------------------------------


def fleet_overview() -> Built:
    top = [
        stat(
            "Spend now ($/h)",
            "What the selected accelerators cost per hour right now (rate of accel_cost_dollars_total x 3600).",
            "currencyUSD",
            rate_sum("accel_cost_dollars_total"),
        ),
        stat(
            "Idle spend now ($/h)",
            "Hourly spend on accelerators in state idle_held or idle_free (accel_idle_cost_dollars_total).",
            "currencyUSD",
            rate_sum("accel_idle_cost_dollars_total"),
            thresholds=thresholds(("red", 20)),
        ),
        stat(
            "Waste (time range)",
            "Utilization-weighted waste over spend in the time range: the share of the money not turned into "
            "work at the target utilization (accel_waste_dollars_total / accel_cost_dollars_total).",
            "percentunit",
            f"{period_sum('accel_waste_dollars_total')}\n/\n{period_sum('accel_cost_dollars_total')}",
            instant=True,
            thresholds=thresholds(("orange", 0.3), ("red", 0.6)),
        ),
        stat(
            "Projected 30-day idle spend",
            "Idle spend in the time range scaled to 30 days: what idle accelerators will cost in a month if "
            "nothing changes.",
            "currencyUSD",
            f"{period_sum('accel_idle_cost_dollars_total')} * 2592000 / $__range_s",
            instant=True,
        ),
        stat(
            "Idle accelerators now",
            "Devices currently idle_held (memory held, no work) or idle_free (no process).",
            "short",
            idle_devices(),
        ),
        stat(
            "Utilization now",
            "Busy fraction of the selected accelerators: busy device-seconds / devices (sum over count).",
            "percentunit",
            utilization(),
            min=0,
            max=1,
        ),
    ]
    return dashboard(
        "accel-fleet-overview",
        "Accelerator fleet overview",
        "Where accelerator money goes: spend, idle spend and waste across the fleet, live. accel-cost-exporter.",
        [
            *top,
            money_series(
                "Spend, idle spend and waste ($/h)",
                "Hourly rates of total spend, spend while idle, and utilization-weighted waste.",
                [
                    Target(rate_sum("accel_cost_dollars_total"), legend="spend"),
                    Target(rate_sum("accel_idle_cost_dollars_total"), legend="idle spend"),
                    Target(rate_sum("accel_waste_dollars_total"), legend="waste"),
                ],
            ),
            price_source_panel(),
            Panel(
                "timeseries",
                "Utilization: fleet and per instance",
                "Busy fraction per instance and for the whole selection (sum of busy rates over device count). The "
                "fleet line is the autoscaling signal (job:accel_utilization:ratio_rate5m): scale out above 70 %, "
                "in below 40 %.",
                "percentunit",
                [Target(utilization(), legend="selection"), Target(utilization("instance"), legend="{{instance}}")],
                custom={"thresholdsStyle": {"mode": "dashed"}},
                defaults={
                    "min": 0,
                    "max": 1,
                    "thresholds": thresholds(("orange", 0.4), ("red", 0.7)),
                },
            ),
            host_bars(
                "Top idle instances ($/h now)",
                "The ten instances spending most on idle accelerators right now.",
                f"topk(10, {rate_sum('accel_idle_cost_dollars_total', 'instance')})",
            ),
            idle_spend_by_host(),
            hosts_table(),
            Panel(
                "timeseries",
                "Accelerators by state",
                "How many devices are active, idle_held (memory held, no work) or idle_free (no process).",
                "short",
                [Target(f"sum by (state) (accel_state{{{F_DEV}}} {TEAM_JOIN})", legend="{{state}}")],
                custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40},
            ),
            kernel_time_vs_sm_panel(),
            money_series(
                "Spend by team ($/h)",
                "Hourly spend per team (team label of accel_cost_dollars_total).",
                [Target(rate_sum("accel_cost_dollars_total", "team"), legend="{{team}}")],
                stacked=True,
                links=[to_team()],
            ),
            money_series(
                "Idle spend by team ($/h)",
                "Hourly spend on idle accelerators per team.",
                [Target(rate_sum("accel_idle_cost_dollars_total", "team"), legend="{{team}}")],
                stacked=True,
                links=[to_team()],
            ),
            effective_price_panel(),
            processes_table(w=12),
            rightsizing(),
            firing_alerts(TEAM_ALERTS),
            exporter_health_row(),
        ],
        alerts_filter=TEAM_ALERTS,
    )


def host_detail() -> Built:
    return dashboard(
        "accel-host-detail",
        "Accelerator host detail",
        "Per-host and per-device view: utilization, states, memory, power, idle time and processes.",
        [
            stat(
                "Instance price ($/h)",
                "Whole-instance hourly price the exporter uses (accel_instance_price_dollars_per_hour).",
                "currencyUSD",
                f"sum(accel_instance_price_dollars_per_hour{{{F_INST}}})",
            ),
            stat(
                "Spend now ($/h)",
                "What the selected devices cost per hour right now.",
                "currencyUSD",
                rate_sum("accel_cost_dollars_total"),
            ),
            stat(
                "Idle spend now ($/h)",
                "Hourly spend on the selected devices while idle.",
                "currencyUSD",
                rate_sum("accel_idle_cost_dollars_total"),
            ),
            stat(
                "Utilization now",
                "Busy fraction of the selected devices (sum over count).",
                "percentunit",
                utilization(),
                min=0,
                max=1,
            ),
            stat("Idle accelerators now", "Devices now idle_held or idle_free.", "short", idle_devices()),
            stat(
                "Power draw now",
                "Total power draw of the selected devices (accel_power_watts, where the driver reports it).",
                "watt",
                f"sum(accel_power_watts{{{F_DEV}}} {TEAM_JOIN})",
            ),
            stat(
                "Grid carbon intensity now (g CO2e/kWh)",
                "The grid intensity the exporter charges carbon at now, before PUE "
                "(accel_carbon_grid_intensity_grams_per_kwh), labelled with its source: schedule "
                "(carbon.schedule_file), config, config-region or builtin (the dated AWS region table). A host "
                "with a schedule file that shows another source has run past the schedule's last period.",
                "short",
                f"max by (instance, source) (accel_carbon_grid_intensity_grams_per_kwh{{{F_INST}}})",
                w=12,
            ),
            stat(
                "Carbon now (kg CO2e/h)",
                "kg CO2e per hour for the electricity the selected devices draw (accel_carbon_grams_total).",
                KG,
                carbon_rate(),
                w=12,
            ),
            Panel(
                "timeseries",
                "Utilization per device",
                "Busy fraction of each device: rate of accel_busy_seconds_total, integrated from the driver's sample "
                "buffer, so it is exact for any interval.",
                "percentunit",
                [
                    Target(
                        f"rate(accel_busy_seconds_total{{{F_DEV}}}[{RI}]) {TEAM_JOIN}", legend="{{instance}} {{device}}"
                    )
                ],
                defaults={"min": 0, "max": 1},
            ),
            activity_panel(),
            state_timeline(),
            Panel(
                "timeseries",
                "Memory used per device",
                "Device memory in use (accel_memory_used_bytes). Memory held on a device with no work is the "
                "abandoned-job pattern.",
                "bytes",
                [Target(f"accel_memory_used_bytes{{{F_DEV}}} {TEAM_JOIN}", legend="{{instance}} {{device}}")],
                defaults={"min": 0},
            ),
            Panel(
                "timeseries",
                "Power per device",
                "Power draw of each device (accel_power_watts), where available.",
                "watt",
                [Target(f"accel_power_watts{{{F_DEV}}} {TEAM_JOIN}", legend="{{instance}} {{device}}")],
                defaults={"min": 0},
            ),
            Panel(
                "timeseries",
                "Idle time per device",
                "Seconds since each device was last active (accel_idle_seconds, 0 while active). Over 1 h with no "
                "process fires AcceleratorIdle; over 4 h with memory held, AcceleratorAbandoned.",
                "s",
                [Target(f"accel_idle_seconds{{{F_DEV}}} {TEAM_JOIN}", legend="{{instance}} {{device}}")],
            ),
            money_series(
                "Idle spend per device ($/h)",
                "Hourly spend on each device while idle, by idle state.",
                [
                    Target(
                        rate_sum("accel_idle_cost_dollars_total", "instance, device, state"),
                        legend="{{instance}} {{device}} {{state}}",
                    )
                ],
            ),
            waste_basis_table(),
            processes_table(),
            Panel(
                "table",
                "Host identity and price source",
                "accel_instance_info: provider, instance type, lifecycle and where the price came from "
                "(price_source none fires AcceleratorPriceUnknown).",
                "short",
                [Target(f"accel_instance_info{{{F_INST}}}", instant=True, table=True)],
                w=24,
                h=5,
                transformations=[
                    {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}
                ],
            ),
            firing_alerts(HOST_ALERTS),
            Row(
                "Device errors",
                [
                    stat(
                        "Critical XID events",
                        f"NVIDIA critical XID events ({XIDS_CRITICAL.replace('|', ', ')}) counted since the exporter "
                        "started, on the selected devices. Any increase fires AcceleratorXidCritical.",
                        "short",
                        f'sum(accel_nvidia_xid_errors_total{{{F_DEV},xid=~"{XIDS_CRITICAL}"}} {TEAM_JOIN}) or vector(0)',
                        w=6,
                    ),
                    stat(
                        "Neuron ECC events",
                        "AWS Neuron device ECC events counted since the exporter started (neuron-monitor "
                        "neuron_hw_counters), on the selected NeuronCores.",
                        "short",
                        f"sum(accel_neuron_ecc_errors_total{{{F_DEV}}} {TEAM_JOIN}) or vector(0)",
                        w=6,
                    ),
                    stat(
                        "Devices down",
                        "Devices not readable on the last poll (accel_device_up == 0); AcceleratorDeviceLost fires "
                        "after 2 minutes.",
                        "short",
                        f"count(accel_device_up{{{F_DEV}}} == 0 {TEAM_JOIN}) or vector(0)",
                        w=6,
                    ),
                    stat(
                        "Exporter errors (time range)",
                        "Errors counted by the exporter's collectors in the time range (accel_exporter_errors_total).",
                        "short",
                        f"sum(increase(accel_exporter_errors_total{{{F_INST}}}[$__range])) or vector(0)",
                        instant=True,
                        w=6,
                    ),
                ],
                collapsed=True,
            ),
            exporter_health_row(),
        ],
        alerts_filter=HOST_ALERTS,
    )


def team_cost() -> Built:
    cost, idle, waste = "accel_cost_dollars_total", "accel_idle_cost_dollars_total", "accel_waste_dollars_total"
    share = team_share()
    return dashboard(
        "accel-team-cost",
        "Accelerator team cost",
        "Spend, idle spend and waste per team, for chargeback and for finding the idle money of each team.",
        [
            stat(
                "Spend (time range)",
                "Money spent on the selected teams' accelerators in the time range.",
                "currencyUSD",
                period_sum(cost),
                instant=True,
            ),
            stat(
                "Idle spend (time range)",
                "Money spent while those accelerators were idle.",
                "currencyUSD",
                period_sum(idle),
                instant=True,
            ),
            stat(
                "Idle share of spend (time range)",
                "Idle spend over spend in the time range (sum over sum).",
                "percentunit",
                f"{period_sum(idle)}\n/\n{period_sum(cost)}",
                instant=True,
            ),
            stat("Spend now ($/h)", "Current hourly spend of the selected teams.", "currencyUSD", rate_sum(cost)),
            stat(
                "Idle spend now ($/h)",
                "Current hourly idle spend. Above 20 $/h for a team (1 h average) fires AcceleratorTeamIdleSpendHigh.",
                "currencyUSD",
                rate_sum(idle),
            ),
            stat(
                "Projected 30-day idle spend",
                "Idle spend in the time range scaled to 30 days.",
                "currencyUSD",
                f"{period_sum(idle)} * 2592000 / $__range_s",
                instant=True,
            ),
            stat(
                "Carbon (time range)",
                "kg CO2e for the electricity the selected teams' accelerators drew in the time range "
                "(accel_carbon_grams_total: energy x PUE x grid intensity), owned and cloud hosts alike.",
                KG,
                carbon_period(),
                instant=True,
                w=12,
            ),
            stat(
                "Carbon now (kg CO2e/h)",
                "Current carbon rate of the selected teams' accelerators, in kg CO2e per hour.",
                KG,
                carbon_rate(),
                w=12,
            ),
            money_series(
                "Spend by team ($/h)",
                "Hourly spend per team.",
                [Target(rate_sum(cost, "team"), legend="{{team}}")],
                stacked=True,
            ),
            money_series(
                "Idle spend by team ($/h)",
                "Hourly spend on idle accelerators per team.",
                [Target(rate_sum(idle, "team"), legend="{{team}}")],
                stacked=True,
            ),
            Panel(
                "timeseries",
                "Utilization by team",
                "Busy fraction of the device time of each team: each device's busy rate is split between teams by "
                "their share of its cost (device_team:accel_cost_share:ratio_rate5m) or, on hosts without a price, "
                "of the device memory their processes hold; summed, and divided by the team's device-equivalents.",
                "percentunit",
                [
                    Target(
                        f"sum by (team) (\n  {share}\n  * on (job, instance, device) group_left ()\n"
                        f"  rate(accel_busy_seconds_total{{{F_DEV}}}[{RI}])\n)\n/\nsum by (team) ({share})",
                        legend="{{team}}",
                        priced=False,  # the memory branch works without a price
                    )
                ],
                defaults={"min": 0, "max": 1, "links": [to_team()]},
            ),
            money_series(
                "Waste by team ($/h)",
                "Utilization-weighted waste per team: price x time x (target - utilization) / target.",
                [Target(rate_sum(waste, "team"), legend="{{team}}")],
                stacked=True,
            ),
            Panel(
                "timeseries",
                "Carbon by team (kg CO2e/h)",
                "kg CO2e per hour per team (on a Slurm host the team is the job's account): each device's energy "
                "x PUE x the grid intensity in force (a schedule, a fixed value or the built-in region table), "
                "charged to the device's owner like its money. Works on hosts without a price.",
                KG,
                [Target(carbon_rate("team"), legend="{{team}}")],
                custom={"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30},
                defaults={"links": [to_team()]},
            ),
            Panel(
                "table",
                "Team cost summary (time range)",
                "Per team, over the time range: spend, idle spend, waste, idle spend as a share of spend, and "
                "carbon in kg CO2e. Teams on hosts without a price show only their carbon.",
                "currencyUSD",
                [
                    Target(period_sum(cost, "team"), instant=True, table=True),
                    Target(period_sum(idle, "team"), instant=True, table=True),
                    Target(period_sum(waste, "team"), instant=True, table=True),
                    Target(f"{period_sum(idle, 'team')}\n/\n{period_sum(cost, 'team')}", instant=True, table=True),
                    Target(carbon_period("team"), instant=True, table=True),
                ],
                w=24,
                h=7,
                overrides=[_column_unit("Idle share", "percentunit"), _column_unit("Carbon (kg CO2e)", KG)],
                transformations=[
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "Value #A": "Spend",
                                "Value #B": "Idle spend",
                                "Value #C": "Waste",
                                "Value #D": "Idle share",
                                "Value #E": "Carbon (kg CO2e)",
                            },
                        },
                    },
                    {"id": "sortBy", "options": {"sort": [{"field": "Idle spend", "desc": True}]}},
                ],
            ),
            waste_table(),
            Panel(
                "bargauge",
                "Idle spend by team and state (time range)",
                "Idle spend split into idle_held (memory held by a process that does nothing: abandoned jobs) and "
                "idle_free (no process: over-provisioned capacity).",
                "currencyUSD",
                [Target(period_sum(idle, "team, state"), legend="{{team}} {{state}}", instant=True)],
            ),
            Panel(
                "bargauge",
                "Idle accelerators by team now",
                "Devices idle now, by owning team: the team charged most for them (device_team:accel_owner:info); "
                f"on hosts without a price, the team of the process holding most memory, else {NO_OWNER}.",
                "short",
                [
                    Target(
                        f'sum by (team) (\n  accel_state{{{F_DEV},state=~"idle_held|idle_free"}}\n'
                        f"  * on (job, instance, device) group_left (team) {device_owner()}\n)",
                        legend="{{team}}",
                        instant=True,
                    )
                ],
            ),
            effective_price_panel(),
            processes_table(w=12),
            firing_alerts(TEAM_ALERTS),
        ],
        alerts_filter=TEAM_ALERTS,
    )


DASHBOARDS = {
    "fleet-overview.json": fleet_overview,
    "host-detail.json": host_detail,
    "team-cost.json": team_cost,
}


def render(name: str) -> str:
    """The JSON text of one dashboard, exactly as committed."""
    return json.dumps(DASHBOARDS[name]().json, indent=2, ensure_ascii=False) + "\n"


def price_free_queries(name: str) -> tuple[str, ...]:
    """The queries of one dashboard that must return data for a host with price_source="none"."""
    return DASHBOARDS[name]().price_free


def gpm_queries(name: str) -> tuple[str, ...]:
    """The queries of one dashboard that read GPM series: data on Hopper and later GPUs only."""
    return DASHBOARDS[name]().gpm


HERE = Path(__file__).resolve().parent
FIX = "run: python grafana/generate.py"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: where to write, and whether only to check."""
    parser = argparse.ArgumentParser(
        prog="generate.py",
        description="Write the Grafana dashboards (" + ", ".join(DASHBOARDS) + ") as JSON. "
        "Then run deploy/kubernetes/generate.py to refresh the Kubernetes ConfigMaps.",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=HERE,
        metavar="DIR",
        help="directory holding the dashboard JSON (default: the directory of this script, grafana/)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming each file that is missing or differs from what would be written",
    )
    args = parser.parse_args(argv)
    if not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir}: not a directory; create it or name an existing one")
    return args


def stale(out_dir: Path) -> dict[str, str]:
    """The dashboard files in `out_dir` that are missing or differ from `render`, with their new text."""
    out = {}
    for name in DASHBOARDS:
        path, text = out_dir / name, render(name)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out[name] = text
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards (or with --check, report stale ones); the exit status for the shell."""
    args = parse_args(argv)
    out_of_date = stale(args.out_dir)
    if args.check:
        if out_of_date:
            where = ", ".join(str(args.out_dir / name) for name in out_of_date)
            print(f"out of date: {where}; {FIX}", file=sys.stderr)
            return 1
        return 0
    for name, text in out_of_date.items():
        path = args.out_dir / name
        try:
            path.write_text(text, encoding="utf-8")
        except OSError as err:
            print(f"cannot write {path}: {err.strerror}; choose a writable --out-dir", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
