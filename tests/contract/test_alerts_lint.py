"""Conventions of the alerting bundle, and its contract with the metric catalogue.

- every alert: severity in {critical, warning, info}; a static `summary` sentence ending with a
  period; a templated `description` ($/h and 30-day figures for money alerts); a `runbook_url`
  whose anchor is a section of docs/runbook.md; no templated label values; `for` within 0-1h;
- recording rules: `level:metric:operations` names, every aggregation keeps `job`;
- the threshold tables (rule file header, docs/alerts.md) agree with the rules;
- contract: every `accel_*` metric and label used in alerts/ and docs/ exists in
  exporter.catalogue.CATALOGUE; every `level:metric:op` name used is a defined recording rule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from exporter.catalogue import CATALOGUE

RULES = ROOT / "alerts" / "accel-cost.rules.yml"
ALERT_RULES = ROOT / "alerts" / "accel-cost.alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
RUNBOOK_BASE = "https://github.com/accel-cost-exporter/accel-cost-exporter/blob/main/docs/runbook.md"
SEVERITIES = {"critical", "warning", "info"}
MONEY_ALERTS = {
    "AcceleratorIdle",
    "AcceleratorHostIdle",
    "AcceleratorHostUnderutilized",
    "AcceleratorAbandoned",
    "AcceleratorLongRunningLowUtilization",
    "AcceleratorTeamIdleSpendHigh",
    "AcceleratorFleetUnderutilized",
    "AcceleratorBusyWithoutSmActivity",
}
# Alerts allowed a `for` outside 0-1h, with the reason (documented in docs/alerts.md). None today.
FOR_EXCEPTIONS: dict[str, str] = {}
SCRAPE_LABELS = {"job", "instance"}
# Target labels the rules group by when relabelling sets them (docs/alerts.md, "Autoscaling").
TARGET_LABELS = {"node_group"}
# Label names with an underscore that a recording-rule level may name (`instance_type:...`).
MULTI_WORD_LABELS = ("instance_type", "node_group")
CATALOGUE_NAMES = {spec.name for spec in CATALOGUE}
CATALOGUE_LABELS = {label for spec in CATALOGUE for label in spec.labels}

# --- shared helpers (also used by tests/contract/test_dashboards_lint.py) -----------------------------------

NAME_RE = re.compile(r"(?<![\w:$])([a-zA-Z_][\w]*(?::[\w]*){0,2})")
CLAUSE_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHERS_RE = re.compile(r"\{([^{}]*)\}")
MATCHER_RE = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "record" in r]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERT_RULES)["groups"] for r in g["rules"] if "alert" in r]


def recording_rule_names() -> set[str]:
    return {r["record"] for r in recording_rules()}


def level_labels(rule_name: str) -> set[str]:
    """Labels a recording rule keeps, from its level: `device_team` -> job, instance, device, team."""
    level = rule_name.split(":")[0]
    words = set()
    for label in MULTI_WORD_LABELS:
        if re.search(rf"(?:^|_){label}(?:_|$)", level):
            words.add(label)
            level = re.sub(rf"(?:^|_){label}(?=_|$)", "", level)
    words |= {w for w in level.split("_") if w}
    labels = {"job"} | ({"job"} if words == {"job"} else words)
    if "device" in labels:
        labels.add("instance")
    return labels


def metric_labels(name: str) -> set[str]:
    """Labels a series can carry in Prometheus: catalogue labels plus job and instance."""
    if ":" in name:
        return level_labels(name)
    return {label for spec in CATALOGUE if spec.name == name for label in spec.labels} | SCRAPE_LABELS


def metric_names(expr: str) -> set[str]:
    """accel_* metric names and recording-rule names appearing in a PromQL expression or text."""
    out = set()
    for token in NAME_RE.findall(expr):
        if token.endswith("_") or token.endswith(":"):
            continue  # a prefix in a grep regex such as accel_exporter_(a|b)
        if token.startswith("accel_") or re.fullmatch(r"[a-z_]+:accel_\w+:\w*", token):
            out.add(token)
    return out


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/on/group_left/... clauses."""
    names = set()
    for clause in CLAUSE_RE.findall(expr):
        names |= {n.strip() for n in clause.split(",") if n.strip()}
    for block in MATCHERS_RE.findall(expr):
        names |= {m.group(1) for m in MATCHER_RE.finditer(block)}
    return names


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def markdown_anchors(text: str) -> set[str]:
    """GitHub-style anchors of the Markdown headings in `text`."""
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# --- alerts ----------------------------------------------------------------------------------------


def test_group_names() -> None:
    assert [g["name"] for g in load_yaml(RULES)["groups"]] == ["accel-cost.rules"]
    assert [g["name"] for g in load_yaml(ALERT_RULES)["groups"]] == ["accel-cost"]


def test_the_expected_alerts_exist() -> None:
    assert {r["alert"] for r in alert_rules()} == MONEY_ALERTS | {
        "AcceleratorDeviceLost",
        "AcceleratorXidCritical",
        "AcceleratorExporterDown",
        "AcceleratorExporterCollectorFailing",
        "AcceleratorExporterStale",
        "AcceleratorExporterConfigReloadFailed",
        "AcceleratorPriceUnknown",
    }


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: str(r["alert"]))
def test_alert_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"Accelerator(?:[A-Z][a-z]+)+", name), "CamelCase with the Accelerator prefix"
    labels = rule.get("labels", {})
    assert labels.get("severity") in SEVERITIES
    for key, value in labels.items():
        assert "{{" not in str(value) and "$value" not in str(value), f"templated label {key} changes alert identity"
    ann = rule.get("annotations", {})
    assert {"summary", "description", "runbook_url"} <= set(ann)
    summary = ann["summary"]
    assert "{{" not in summary and summary.endswith(".") and summary[0].isupper(), summary
    assert "{{" in ann["description"], "description should show the values that fired the alert"
    assert ann["description"].rstrip().endswith("."), ann["description"]
    assert ann["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
    if name in MONEY_ALERTS:
        assert "$/h" in ann["description"] and "per 30 days" in ann["description"]
    for_seconds = parse_duration(rule.get("for", "0s"))
    if name not in FOR_EXCEPTIONS:
        assert 0 <= for_seconds <= 3600, f"for: {rule.get('for')}"
    if labels["severity"] == "critical":
        assert for_seconds <= 300, "health alerts must be fast"
    if name in MONEY_ALERTS:
        # One 10-minute scrape gap or an exporter restart must not resolve and re-notify them.
        assert parse_duration(rule.get("keep_firing_for", "0s")) >= 600, "keep_firing_for: at least 10m"


def test_runbook_has_a_section_per_alert() -> None:
    text = RUNBOOK.read_text()
    anchors = markdown_anchors(text)
    names = {r["alert"] for r in alert_rules()}
    assert {n.lower() for n in names} <= anchors
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_name = {s.split("\n", 1)[0].strip(): s for s in sections}
    assert set(by_name) == names, "a runbook section per alert, and no stale ones"
    for name, body in by_name.items():
        for part in ("**Meaning.**", "**What it costs.**", "**Confirm.**", "**Act.**", "```promql"):
            assert part in body, f"{name}: missing {part}"
    assert "11094" in text


def test_no_job_name_outside_the_documented_selector() -> None:
    for rule in [*recording_rules(), *alert_rules()]:
        jobs = re.findall(r'\bjob\s*(?:=~|=|!=|!~)\s*"([^"]*)"', rule["expr"])
        if rule.get("alert") == "AcceleratorExporterDown":
            assert jobs == ["(.+/)?accel.*"]
        else:
            assert jobs == [], f"{rule.get('alert') or rule.get('record')} selects a job"
    assert 'up{job=~"(.+/)?accel.*"}' in ALERTS_DOC.read_text()
    assert 'up{job=~"(.+/)?accel.*"}' in ALERT_RULES.read_text().split("groups:")[0]


def test_job_selector_matches_every_shipped_setup() -> None:
    """The PodMonitor's job is <namespace>/<name> in whatever namespace it is applied to."""
    selector = re.compile("(.+/)?accel.*")
    for job in (
        "accel",
        "accel-cost-exporter",
        "monitoring/accel-cost-exporter",
        "accel-cost-exporter/accel-cost-exporter",
    ):
        assert selector.fullmatch(job), job
    for job in ("node", "kubernetes-pods", "monitoring/node-exporter"):
        assert not selector.fullmatch(job), job


# --- recording rules -----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", recording_rules(), ids=lambda r: str(r["record"]))
def test_recording_rule_naming(rule: dict[str, Any]) -> None:
    name = rule["record"]
    m = re.fullmatch(r"([a-z]+(?:_[a-z]+)*):(accel_[a-z0-9_]+):([a-z0-9_]+)", name)
    assert m, f"{name} is not level:metric:operations"
    _level, metric, ops = m.groups()
    assert not metric.endswith("_total"), "strip _total once rate() is applied"
    if "rate(" in rule["expr"] and "rate" not in ops:
        assert any(":" in n for n in metric_names(rule["expr"])), f"{name}: rate() but no rate in operations"
    if "ratio" in ops:
        assert "/" in rule["expr"]
    window = re.findall(r"rate(\d+[mhd])", ops)
    for w in window:
        assert f"[{w}]" in rule["expr"] or any(w in n for n in metric_names(rule["expr"]) if ":" in n), name


@pytest.mark.parametrize("rule", [*recording_rules(), *alert_rules()], ids=lambda r: str(r.get("record") or r["alert"]))
def test_aggregations_keep_job(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    for agg in re.finditer(r"\b(sum|count|min|max|avg|topk|bottomk|group)\s*(by|without)?\s*\(", expr):
        if agg.group(2) is None:
            # `count(...)` and friends without `by` would drop job: only allowed nowhere.
            pytest.fail(f"{agg.group(0)} without by (job, ...) in {expr}")
        if agg.group(2) == "by":
            clause = expr[agg.end() :].split(")", 1)[0]
            assert "job" in [c.strip() for c in clause.split(",")], f"{agg.group(0)}{clause}) drops job"


def _table(text: str, prefix: str = "") -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in text.splitlines():
        line = line.removeprefix(prefix).strip()
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and re.fullmatch(r"Accelerator\w+", cells[0]):
            rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


def test_threshold_tables_agree_with_rules() -> None:
    header = _table(ALERT_RULES.read_text().split("groups:")[0], prefix="#")
    docs = _table(ALERTS_DOC.read_text())
    assert header == docs, "the table in accel-cost.alerts.yml and docs/alerts.md differ"
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(docs) == set(rules)
    for name, (severity, condition, for_) in docs.items():
        rule = rules[name]
        assert severity == rule["labels"]["severity"], name
        assert parse_duration(for_) == parse_duration(rule.get("for", "0s")), f"{name}: for"
        for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", condition):
            assert re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", rule["expr"]), f"{name}: {number} not in expr"


# --- contract with the catalogue -------------------------------------------------------------------


def test_every_metric_in_the_rules_is_in_the_catalogue() -> None:
    defined = recording_rule_names()
    for path in (RULES, ALERT_RULES):
        names = metric_names(path.read_text())
        assert names, path
        unknown = {n for n in names if (":" in n and n not in defined) or (":" not in n and n not in CATALOGUE_NAMES)}
        assert unknown == set(), f"{path.name}: not in exporter/catalogue.py nor a recording rule"


def test_every_metric_in_the_docs_is_in_the_catalogue() -> None:
    defined = recording_rule_names()
    for path in (RUNBOOK, ALERTS_DOC):
        unknown = set()
        for n in metric_names(path.read_text()):
            if ":" in n:
                # docs/alerts.md writes `instance:` / `team:` `accel_x:rate5m` for three rules at once
                if not any(d == n or d.endswith(":" + n) or d.startswith(n) for d in defined):
                    unknown.add(n)
            elif n not in CATALOGUE_NAMES and not any(n + ":" in d for d in defined):
                unknown.add(n)
        assert unknown == set(), f"{path.name}: unknown metrics"


@pytest.mark.parametrize("rule", [*recording_rules(), *alert_rules()], ids=lambda r: str(r.get("record") or r["alert"]))
def test_labels_in_rules_exist(rule: dict[str, Any]) -> None:
    """A typo in a label name (`devcie`) silently matches nothing: check them against the catalogue."""
    known = CATALOGUE_LABELS | SCRAPE_LABELS | TARGET_LABELS
    unknown = label_names(rule["expr"]) - known
    assert unknown == set()
    # A matcher on a series must use a label that series has.
    for m in re.finditer(r"([a-zA-Z_][\w:]*)\s*\{([^{}]*)\}", rule["expr"]):
        labels = {x.group(1) for x in MATCHER_RE.finditer(m.group(2))}
        if m.group(1) in CATALOGUE_NAMES or ":" in m.group(1) or m.group(1) == "up":
            allowed = SCRAPE_LABELS if m.group(1) == "up" else metric_labels(m.group(1))
            assert labels <= allowed, f"{m.group(0)}"


def test_helpers_catch_mistakes() -> None:
    """The checks above must be able to fail."""
    assert metric_names('rate(accel_bussy_seconds_total{device="x"}[5m])') == {"accel_bussy_seconds_total"}
    assert "accel_bussy_seconds_total" not in CATALOGUE_NAMES
    assert metric_names("team:accel_cost_dollars_per_hour:rate1h > 20") == {"team:accel_cost_dollars_per_hour:rate1h"}
    assert label_names('sum by (job, devcie) (x{instance="a"})') == {"job", "devcie", "instance"}
    assert markdown_anchors("## AcceleratorIdle\n") == {"acceleratoridle"}
    assert level_labels("device_team:accel_owner:info") == {"job", "instance", "device", "team"}
    assert level_labels("instance_type:accel_utilization:ratio_rate5m") == {"job", "instance_type"}
    assert level_labels("instance_team:accel_owner:info") == {"job", "instance", "team"}
    assert level_labels("node_group:accel_utilization:ratio_rate5m") == {"job", "node_group"}
    assert parse_duration("1h30m") == 5400
