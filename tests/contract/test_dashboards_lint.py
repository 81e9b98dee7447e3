"""Grafana dashboard conventions (dashboard-linter's rules, in pytest) and the catalogue contract.

- identity: stable uid (<= 40 chars), "id": null, pinned schemaVersion, tags, no __inputs;
- one `datasource` variable, used by every panel and query; chained job -> instance -> device and
  team variables from label_values(), multi-select with allValue ".+" (team: ".*", see below);
- hosts without a price (price_source="none") stay visible: the team variable and every query
  outside the money panels work without a cost series (tests/system/test_e2e_bundle.py runs them against
  an unpriced host);
- links between the three dashboards carry $datasource, $instance and $team; firing Accelerator*
  alerts show as annotations;
- panels: only timeseries/stat/bargauge/table/row, a title, a description and a unit on each, on
  the 24-column grid without overlaps;
- queries: $__rate_interval in every rate()/increase() (increase(x[$__range]) or
  quantile_over_time(q, x[$__range]) for period stats),
  every selector filtered by the variables whose labels the series has, device-level queries
  restricted to the selected teams;
- contract: every accel_* metric exists in exporter.catalogue, every rule name in alerts/;
- the committed JSON is exactly what grafana/generate.py produces.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, grafana_generator
from test_alerts_lint import (
    CATALOGUE_LABELS,
    CATALOGUE_NAMES,
    SCRAPE_LABELS,
    label_names,
    metric_labels,
    metric_names,
    recording_rule_names,
)

GRAFANA = ROOT / "grafana"
FILES = ["fleet-overview.json", "host-detail.json", "team-cost.json"]
PANEL_TYPES = {"timeseries", "stat", "bargauge", "table", "row"}
UNITS = {"currencyUSD", "percentunit", "percent", "bytes", "watt", "s", "short", "celsius", "hertz", "masskg"}
DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39
VARIABLE_MATCHERS = {
    "job": 'job=~"$job"',
    "instance": 'instance=~"$instance"',
    "device": 'device=~"$device"',
    "team": 'team=~"$team"',
}
SELECTOR_RE = re.compile(r"([a-zA-Z_][\w:]*)\s*(\{[^{}]*\})?")
ALL_VALUES = {"job": ".+", "instance": ".+", "device": ".+", "team": ".*"}
PERIOD_FUNCTIONS = {"increase", "quantile_over_time"}
ALERTS_LABELS = {"alertname", "alertstate", "severity"}
# Panels allowed to need a price: their titles name money.
MONEY_TITLE_RE = re.compile(r"\$|spend|waste|saving|save|price|cost", re.I)
UIDS = {
    "fleet-overview.json": "accel-fleet-overview",
    "host-detail.json": "accel-host-detail",
    "team-cost.json": "accel-team-cost",
}


def load(name: str) -> dict[str, Any]:
    data = json.loads((GRAFANA / name).read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries() -> list[tuple[str, str, str]]:
    return [
        (name, f"{p['title']} [{t['refId']}]", t["expr"])
        for name in FILES
        for p in panels(load(name))
        for t in p.get("targets", [])
    ]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matcher block) for every accel_* or recording-rule selector in the expression."""
    out = []
    for m in SELECTOR_RE.finditer(expr):
        name, block = m.group(1), m.group(2) or ""
        if name in metric_names(name) and not expr[m.end() :].lstrip().startswith("("):
            start = m.start()
            if start > 0 and (expr[start - 1].isalnum() or expr[start - 1] in "_:$"):
                continue
            out.append((name, block))
    return out


@pytest.mark.parametrize("name", FILES)
def test_generated_json_is_committed(name: str) -> None:
    assert (GRAFANA / name).read_text() == grafana_generator().render(name), "run: python grafana/generate.py"


@pytest.mark.parametrize("name", FILES)
def test_identity(name: str) -> None:
    d = load(name)
    assert d["id"] is None
    assert isinstance(d["uid"], str) and 0 < len(d["uid"]) <= 40 and re.fullmatch(r"[a-z0-9-]+", d["uid"])
    assert d["schemaVersion"] == SCHEMA_VERSION
    assert d["title"] and d["tags"] and d["description"]
    assert "__inputs" not in d and "${DS_" not in json.dumps(d)
    assert d["graphTooltip"] == 1
    assert (d["refresh"].endswith("s") and int(d["refresh"][:-1]) >= 30) or d["refresh"].endswith(("m", "h"))


def test_uids_are_unique() -> None:
    assert len({load(n)["uid"] for n in FILES}) == len(FILES)


@pytest.mark.parametrize("name", FILES)
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    ds = [v for v in variables.values() if v["type"] == "datasource"]
    assert len(ds) == 1 and ds[0]["name"] == "datasource" and ds[0]["query"] == "prometheus"
    chain = {"job": [], "instance": ["$job"], "device": ["$job", "$instance"], "team": ["$job", "$instance"]}
    for var, parents in chain.items():
        v = variables[var]
        assert v["type"] == "query" and v["datasource"] == DS
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ALL_VALUES[var]
        assert re.fullmatch(rf"label_values\(.+,\s*{var}\)", v["definition"])
        assert v["query"]["query"] == v["definition"]
        for parent in parents:
            assert parent in v["definition"], f"{var} must be chained to {parent}"
        assert metric_names(v["definition"]) <= CATALOGUE_NAMES


@pytest.mark.parametrize("name", FILES)
def test_panels(name: str) -> None:
    d = load(name)
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    for p in panels(d):
        assert p["type"] in PANEL_TYPES, f"{p['title']}: {p['type']}"
        assert p["title"]
        if p["type"] == "row":
            continue
        assert len(p["description"]) > 20, p["title"]
        # Grafana interpolates descriptions: "$team" would show the selected teams' regex.
        assert not re.search(r"\$\{?[a-z_]", p["description"]), f"{p['title']}: variable in the description"
        assert p["datasource"] == DS
        assert p["fieldConfig"]["defaults"]["unit"] in UNITS, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS
            assert t["expr"].strip()
        for override in p["fieldConfig"].get("overrides", []):
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    assert prop["value"] in UNITS


@pytest.mark.parametrize("name", FILES)
def test_grid(name: str) -> None:
    """Panels fit the 24-column grid and do not overlap (collapsed rows' panels among themselves)."""
    d = load(name)
    layers = [[p for p in d["panels"]]] + [p["panels"] for p in d["panels"] if p.get("panels")]
    for layer in layers:
        cells: set[tuple[int, int]] = set()
        for p in layer:
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{p['title']} overlaps another panel"
            cells |= mine


@pytest.mark.parametrize(("name", "title", "expr"), queries(), ids=[f"{n}:{t}" for n, t, _ in queries()])
def test_query(name: str, title: str, expr: str) -> None:
    # Range selectors: $__rate_interval, or $__range inside increase() for period stats.
    for window in re.findall(r"\[([^\]]+)\]", expr):
        assert window in ("$__rate_interval", "$__range"), f"fixed range [{window}]"
    for fn, window in re.findall(r"\b(\w+)\((?:[^()]|\([^()]*\))*?\[([^\]]+)\]", expr):
        if window == "$__range":
            assert fn in PERIOD_FUNCTIONS, f"$__range is only for period stats ({PERIOD_FUNCTIONS}), found {fn}()"
    for fn in re.findall(r"\b(rate|irate|increase|delta|deriv)\s*\(", expr):
        assert fn != "irate", "irate hides spikes; use rate"
    if expr.startswith("ALERTS{"):
        assert 'alertname=~"Accelerator.*"' in expr and 'job=~"$job"' in expr, expr
        assert label_names(expr) - ALERTS_LABELS - CATALOGUE_LABELS - SCRAPE_LABELS == set()
        return
    # Every selector is filtered by every variable whose label its series carries.
    found = selectors(expr)
    assert found, f"no accel_* metric in {expr}"
    for metric, block in found:
        labels = metric_labels(metric)
        for var, matcher in VARIABLE_MATCHERS.items():
            if var in labels:
                assert matcher in block, f"{metric}{block} is not filtered by ${var}"
    # Device-level queries honour the team selection (through the cost counters' team label).
    if any('device=~"$device"' in block for _, block in found):
        assert 'team=~"$team"' in expr, "device-level query ignores $team"
    # Labels exist.
    assert label_names(expr) - CATALOGUE_LABELS - SCRAPE_LABELS == set()


def test_contract_every_metric_exists() -> None:
    defined = recording_rule_names()
    for name in FILES:
        text = json.dumps(load(name))
        names = metric_names(text)
        assert names
        unknown = {n for n in names if (":" in n and n not in defined) or (":" not in n and n not in CATALOGUE_NAMES)}
        assert unknown == set(), f"{name}: not in exporter/catalogue.py nor alerts/accel-cost.rules.yml"


def test_required_content() -> None:
    """What the dashboards must show (issue 5), found by panel title across the three."""
    titles = {(n, p["title"]): p for n in FILES for p in panels(load(n))}

    def find(pattern: str) -> list[dict[str, Any]]:
        return [p for (_, title), p in titles.items() if re.search(pattern, title, re.I)]

    for pattern in (
        r"^Spend now \(\$/h\)$",
        r"^Idle spend now \(\$/h\)$",
        r"^Waste",
        r"Projected 30-day idle spend",
        r"Idle accelerators now",
        r"Top idle instances",
        r"^Spend by team",
        r"^Idle spend by team",
        r"Utilization per device",
        r"state timeline",
        r"Long-running processes",
        r"Effective \$ per busy accelerator-hour, by model",
    ):
        assert find(pattern), pattern
    for p in find(r"Effective \$ per busy"):
        expr = p["targets"][0]["expr"]
        assert "group_left (model) accel_device_info" in expr and "accel_busy_seconds_total" in expr
    for p in find(r"Long-running processes"):
        exprs = " ".join(t["expr"] for t in p["targets"])
        assert "accel_process_start_time_seconds" in exprs and "accel_process_memory_used_bytes" in exprs
        assert "team" in exprs and p["type"] == "table"
    for p in find(r"Projected 30-day"):
        assert p["fieldConfig"]["defaults"]["unit"] == "currencyUSD"


def test_lint_can_fail() -> None:
    """The selector check must see unfiltered selectors and fixed windows."""
    assert selectors('sum(rate(accel_cost_dollars_total{job=~"$job"}[5m]))') == [
        ("accel_cost_dollars_total", '{job=~"$job"}')
    ]
    assert selectors("team:accel_utilization:ratio_rate5m") == [("team:accel_utilization:ratio_rate5m", "")]
    assert "team" in metric_labels("accel_cost_dollars_total")


@pytest.mark.parametrize("name", FILES)
def test_only_money_panels_need_a_price(name: str) -> None:
    """Utilization, state, idle and device panels must keep showing hosts with price_source="none".

    GPM queries are the exception the generator declares (`gpm_queries`): they have data on
    Hopper and later GPUs only, priced or not; test_gpm_queries_read_gpm_series keeps that honest.
    """
    gen = grafana_generator()
    price_free, gpm = set(gen.price_free_queries(name)), set(gen.gpm_queries(name))
    for p in panels(load(name)):
        if p["type"] == "row" or MONEY_TITLE_RE.search(p["title"]):
            continue
        for t in p["targets"]:
            assert t["expr"] in price_free | gpm, f"{p['title']} [{t['refId']}] needs a cost series"


GPM_METRIC_RE = re.compile(
    r"\baccel_(?:sm_active|tensor_active|dram_active)_seconds_total\b|\baccel_sm_occupancy_ratio\b"
)


@pytest.mark.parametrize("name", FILES)
def test_gpm_queries_read_gpm_series(name: str) -> None:
    """A query may only be excused from the unpriced-host check for GPM if it reads GPM series and
    its panel says that only GPM-capable GPUs have data."""
    gpm = set(grafana_generator().gpm_queries(name))
    for p in panels(load(name)):
        for t in p.get("targets", []):
            if t["expr"] in gpm:
                assert GPM_METRIC_RE.search(t["expr"]), f"{p['title']} [{t['refId']}] is marked GPM but reads none"
                assert "Hopper" in p["description"] and "GPM" in p["description"], p["title"]
    assert GPM_METRIC_RE.search("rate(accel_sm_active_seconds_total[5m])")
    assert not GPM_METRIC_RE.search("rate(accel_busy_seconds_total[5m])")


def test_gpm_panels() -> None:
    """Issue 14: SM and tensor activity beside utilization on host detail, per model on the fleet."""
    by_title = {p["title"]: p for n in FILES for p in panels(load(n))}
    host = by_title["Utilization, SM and tensor activity"]
    assert host in panels(load("host-detail.json")) and host["fieldConfig"]["defaults"]["unit"] == "percentunit"
    exprs = [t["expr"] for t in host["targets"]]
    for metric in ("accel_busy_seconds_total", "accel_sm_active_seconds_total", "accel_tensor_active_seconds_total"):
        assert any(e.startswith(f"rate({metric}{{") for e in exprs), metric
    assert "AcceleratorBusyWithoutSmActivity" in host["description"]

    fleet = by_title["Kernel time vs SM activity (GPM-capable models)"]
    assert fleet in panels(load("fleet-overview.json")) and fleet["fieldConfig"]["defaults"]["unit"] == "percentunit"
    busy, sm = (t["expr"] for t in fleet["targets"])
    for expr in (busy, sm):
        assert expr.startswith("sum by (model) (") and "\n/\ncount by (model) (" in expr
        assert "group_left (model) accel_device_info{" in expr and 'kind="gpu"' in expr
    # Utilization of the GPM-capable GPUs only: an A100 beside an H100 would skew the comparison.
    assert "rate(accel_busy_seconds_total{" in busy and "and on (job, instance, device) accel_sm_active" in busy
    assert "rate(accel_sm_active_seconds_total{" in sm

    basis = by_title["Waste basis per device"]
    assert basis["type"] == "table" and "accel_waste_basis_info{" in basis["targets"][0]["expr"]


def test_price_classification_can_fail() -> None:
    gen = grafana_generator()
    assert gen.Target(f"sum(accel_cost_dollars_total{{{gen.F_TEAM}}})").needs_price
    assert gen.Target(f"accel_idle_seconds{{{gen.F_DEV}}} {gen.TEAM_JOIN}").needs_price is False
    assert gen.Target("sum(accel_price_dollars_per_hour)").needs_price
    # needs_price ignores TEAM_JOIN, so the join itself must work without cost series.
    assert "accel_process_info" in gen.TEAM_JOIN and "accel_device_up" in gen.TEAM_JOIN


@pytest.mark.parametrize("name", FILES)
def test_team_variable_does_not_need_a_price(name: str) -> None:
    team = next(v for v in load(name)["templating"]["list"] if v["name"] == "team")
    assert "accel_process_info" in team["definition"], "unpriced hosts have no cost series to take teams from"


@pytest.mark.parametrize("name", FILES)
def test_links_between_dashboards(name: str) -> None:
    """Each dashboard links to the two others, and data links open a known dashboard, keeping the variables."""
    d = load(name)
    links = d["links"]
    others = {uid for n, uid in UIDS.items() if n != name}
    assert {re.match(r"/d/([\w-]+)", link["url"]).group(1) for link in links} == others  # type: ignore[union-attr]
    for link in links:
        assert link["type"] == "link" and link["keepTime"] is True
        for var in ("datasource", "instance", "team"):
            assert f"${{{var}:queryparam}}" in link["url"], f"{link['title']} drops ${var}"
    data_links = [link for p in panels(d) for link in p.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
    assert data_links, f"{name}: no data links"
    for link in data_links:
        m = re.match(r"/d/([\w-]+)\?", link["url"])
        assert m and m.group(1) in UIDS.values(), link["url"]
        assert "${datasource:queryparam}" in link["url"] and "${__url_time_range}" in link["url"]
        assert re.search(r"var-instance=\$\{__(field|data)\.|\$\{instance:queryparam\}", link["url"]), link["url"]
        assert re.search(r"var-team=\$\{__(field|data)\.|\$\{team:queryparam\}", link["url"]), link["url"]


@pytest.mark.parametrize("name", FILES)
def test_alert_annotations(name: str) -> None:
    (annotation,) = load(name)["annotations"]["list"]
    assert annotation["datasource"] == DS and annotation["enable"] is True
    assert annotation["expr"].startswith('ALERTS{alertstate="firing",alertname=~"Accelerator.*",job=~"$job"')
    assert "{{alertname}}" in annotation["titleFormat"]


def test_issue_11_panels() -> None:
    """The panels for the people who pay: waste by team x host x type, idle by host, rightsizing, alerts."""
    by_title = {p["title"]: (n, p) for n in FILES for p in panels(load(n))}

    def one(pattern: str) -> dict[str, Any]:
        found = [p for title, (_, p) in by_title.items() if re.search(pattern, title)]
        assert len(found) == 1, pattern
        return found[0]

    waste = one(r"^Waste by team, host and instance type \(time range\)$")
    first = waste["targets"][0]["expr"]
    assert first.startswith("sort_desc(") and "accel_waste_dollars_total" in first and "$__range" in first
    assert "group_left (instance_type) accel_instance_info" in first
    assert {"id": "sortBy", "options": {"sort": [{"field": "Waste", "desc": True}]}} in waste["transformations"]

    idle = one(r"^Idle spend by host \(time range\)$")
    assert re.search(
        r"sum by \(instance\) \(increase\(accel_idle_cost_dollars_total\{.*\}\[\$__range\]\)\)",
        idle["targets"][0]["expr"],
    )

    saving = one(r"^What rightsizing would save")
    exprs = [t["expr"] for t in saving["targets"]]
    assert "quantile_over_time(0.95, instance:accel_busy_seconds:rate5m" in exprs[1]
    assert "ceil(" in exprs[2] and "/ 0.7)" in exprs[2]
    assert "instance:accel_devices:count" in exprs[0] and "* 720" in exprs[3]
    assert any(o["properties"] == [{"id": "unit", "value": "currencyUSD"}] for o in saving["fieldConfig"]["overrides"])

    with_alerts = {n for n in FILES for p in panels(load(n)) if p["title"] == "Firing accelerator alerts"}
    assert with_alerts == set(FILES)


def test_docs_describe_the_dashboards() -> None:
    """docs/dashboards.md names each dashboard, its uid and each bold panel title, and the rightsizing figures."""
    doc = (ROOT / "docs" / "dashboards.md").read_text()
    gen = grafana_generator()
    for name in FILES:
        d = load(name)
        assert f"`{d['uid']}`" in doc and d["title"] in doc, name
    titles = [p["title"] for n in FILES for p in panels(load(n))]
    for bold in re.findall(r"^- \*\*(.+?)\*\*", doc, re.M):
        assert any(t.startswith(bold) for t in titles), f"docs/dashboards.md names a panel that does not exist: {bold}"
    assert f"p95 / {gen.RIGHTSIZE_TARGET})" in doc and f"{gen.HOURS_PER_MONTH} h" in doc
    assert f"`{gen.NO_OWNER}`" in doc


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    """grafana/generate.py as a user runs it: a real process, from the repository root."""
    return subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_generator_help() -> None:
    done = run_generator("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert "--check" in done.stdout and "--out-dir" in done.stdout


def test_generator_check_passes_on_the_committed_json() -> None:
    done = run_generator("--check")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_generator_check_names_stale_files(tmp_path: Path) -> None:
    """--check writes nothing and exits 1 naming each missing or edited file and the fix."""
    (tmp_path / "host-detail.json").write_text((GRAFANA / "host-detail.json").read_text())
    (tmp_path / "team-cost.json").write_text("{}\n")
    done = run_generator("--check", "--out-dir", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "fleet-overview.json" in done.stderr and "team-cost.json" in done.stderr
    assert "host-detail.json" not in done.stderr
    assert "run: python grafana/generate.py" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-detail.json", "team-cost.json"]
    assert (tmp_path / "team-cost.json").read_text() == "{}\n"


def test_generator_writes_then_check_passes(tmp_path: Path) -> None:
    done = run_generator("--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    for name in FILES:
        assert (tmp_path / name).read_text() == (GRAFANA / name).read_text()
        assert name in done.stdout
    assert run_generator("--check", "--out-dir", str(tmp_path)).returncode == 0


def test_generator_bad_out_dir_is_a_clear_error(tmp_path: Path) -> None:
    done = run_generator("--out-dir", str(tmp_path / "missing"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--out-dir" in done.stderr and "not a directory" in done.stderr
    assert not (tmp_path / "missing").exists()
