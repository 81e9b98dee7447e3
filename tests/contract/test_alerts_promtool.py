"""The alerting bundle through the real tools: promtool (check + unit tests) and amtool (routes).

Behaviour tests (tests/alerts/*.yml except annotations.yml) run on a copy of the alert rules with
annotations stripped, so rewording a description never breaks a logic test; annotations.yml runs
on the shipped files and pins every annotation exactly (the nvidia_gpu_exporter split).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

ALERTS_DIR = ROOT / "alerts"
RULES = ALERTS_DIR / "accel-cost.rules.yml"
ALERT_RULES = ALERTS_DIR / "accel-cost.alerts.yml"
AM_CONFIG = ALERTS_DIR / "alertmanager.example.yml"
PROMTOOL_TESTS = ROOT / "tests" / "alerts"
ANNOTATIONS_TEST = PROMTOOL_TESTS / "annotations.yml"
BEHAVIOUR_TESTS = sorted(p for p in PROMTOOL_TESTS.glob("*.yml") if p != ANNOTATIONS_TEST)

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (apt-get install prometheus-alertmanager)"
)


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _load(ALERT_RULES)["groups"] for r in g["rules"] if "alert" in r]


def _recording_rules() -> list[dict[str, Any]]:
    return [r for g in _load(RULES)["groups"] for r in g["rules"] if "record" in r]


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # A hang guard only: one rules test can take 20 s of CPU, and minutes beside other load.
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


def _stripped_tree(tmp_path: Path) -> Path:
    """Lay out <tmp>/alerts (annotations stripped) and <tmp>/tests/alerts so `../../alerts` resolves."""
    (tmp_path / "alerts").mkdir()
    shutil.copy(RULES, tmp_path / "alerts" / RULES.name)
    data = _load(ALERT_RULES)
    for group in data["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts" / ALERT_RULES.name).write_text(yaml.safe_dump(data, sort_keys=False))
    tests_dir = tmp_path / "tests" / "alerts"
    tests_dir.mkdir(parents=True)
    for test in BEHAVIOUR_TESTS:
        shutil.copy(test, tests_dir / test.name)
    return tests_dir


@needs_promtool
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = _run([PROMTOOL, "check", "rules", str(RULES), str(ALERT_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_recording_rules())} rules found" in result.stdout
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


@needs_promtool
@pytest.mark.parametrize("test_file", [p.name for p in BEHAVIOUR_TESTS])
def test_promtool_behaviour(test_file: str, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    tests_dir = _stripped_tree(tmp_path)
    result = _run([PROMTOOL, "test", "rules", test_file], cwd=tests_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_exact_annotations() -> None:
    assert PROMTOOL is not None
    result = _run([PROMTOOL, "test", "rules", ANNOTATIONS_TEST.name], cwd=PROMTOOL_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def _p4d_fleet_test(hosts: int, busy: float, samples: int) -> dict[str, Any]:
    """A promtool test of `hosts` p4d.24xlarge (8 GPUs, 21.96 $/h) at `busy`, 5-minute samples, teams in turn."""
    teams = ("ml-research", "inference", "web-search")
    per_step = 21.96 / 8 / 12
    series = []
    expected = []
    for h in range(hosts):
        instance, team = f"p4d-{h:02d}", teams[h % len(teams)]
        series.append(
            {
                "series": f'accel_instance_info{{job="accel",instance="{instance}",provider="aws",'
                f'instance_type="p4d.24xlarge",instance_id="i-{h}",region="us-east-1",zone="us-east-1a",'
                f'lifecycle="on-demand",price_source="table"}}',
                "values": f"1x{samples}",
            }
        )
        for d in range(8):
            dev = f'job="accel",instance="{instance}",device="nvidia{d}"'
            owner = f'{dev},team="{team}",workload="w"'
            series += [
                {"series": f"accel_busy_seconds_total{{{dev}}}", "values": f"0+{300 * busy:g}x{samples}"},
                {"series": f'accel_state_seconds_total{{{dev},state="active"}}', "values": f"0+300x{samples}"},
                {"series": f"accel_device_up{{{dev}}}", "values": f"1x{samples}"},
                {"series": f"accel_cost_dollars_total{{{owner}}}", "values": f"0+{per_step:.6f}x{samples}"},
                {
                    "series": f"accel_waste_dollars_total{{{owner}}}",
                    "values": f"0+{per_step * (0.8 - busy) / 0.8:.6f}x{samples}",
                },
            ]
        expected.append({"exp_labels": {"severity": "warning", "job": "accel", "instance": instance, "team": team}})
    return {"interval": "5m", "input_series": series, "expected": expected}


@needs_promtool
def test_42_p4d_hosts_at_22_percent_are_each_named(tmp_path: Path) -> None:
    """The main story: 42 hosts at 22 % for 6h; every host is named, with its team, by a warning."""
    assert PROMTOOL is not None
    tests_dir = _stripped_tree(tmp_path)
    case = _p4d_fleet_test(hosts=42, busy=0.22, samples=80)
    expected = case.pop("expected")
    case["promql_expr_test"] = [
        {
            "expr": "round(job:accel_utilization:ratio_rate1h, 0.001)",
            "eval_time": "2h",
            "exp_samples": [{"labels": '{job="accel"}', "value": 0.22}],
        },
        {
            "expr": "round(sum by (job) (instance:accel_waste_dollars_per_hour:rate6h))",
            "eval_time": "6h",
            "exp_samples": [{"labels": '{job="accel"}', "value": round(42 * 21.96 * 0.725)}],
        },
    ]
    case["alert_rule_test"] = [
        {"eval_time": "5h35m", "alertname": "AcceleratorHostUnderutilized", "exp_alerts": []},
        {"eval_time": "6h", "alertname": "AcceleratorHostUnderutilized", "exp_alerts": expected},
        {"eval_time": "55m", "alertname": "AcceleratorFleetUnderutilized", "exp_alerts": []},
        {
            "eval_time": "6h",
            "alertname": "AcceleratorFleetUnderutilized",
            "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "accel"}}],
        },
    ]
    doc = {
        "rule_files": [f"../../alerts/{RULES.name}", f"../../alerts/{ALERT_RULES.name}"],
        "evaluation_interval": "5m",
        "group_eval_order": ["accel-cost.rules", "accel-cost"],
        "tests": [case],
    }
    (tests_dir / "fleet_42.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _run([PROMTOOL, "test", "rules", "fleet_42.yml"], cwd=tests_dir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert len(expected) == 42 and len({e["exp_labels"]["instance"] for e in expected}) == 42


def _test_docs() -> list[dict[str, Any]]:
    return [_load(p) for p in [*BEHAVIOUR_TESTS, ANNOTATIONS_TEST]]


def test_every_alert_is_tested_firing_before_for_and_silent() -> None:
    """Each alert has a firing case, a silent case before it, and exact annotations."""
    fired: set[str] = set()
    silent: set[str] = set()
    annotated: set[str] = set()
    for doc in _test_docs():
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                name = case["alertname"]
                if case.get("exp_alerts"):
                    fired.add(name)
                    if all("exp_annotations" in a for a in case["exp_alerts"]):
                        annotated.add(name)
                else:
                    silent.add(name)
    names = {r["alert"] for r in _alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert names - annotated == set(), "alerts without exact annotations in annotations.yml"


def test_every_recording_rule_is_tested() -> None:
    exprs = " ".join(
        case["expr"] for doc in _test_docs() for group in doc["tests"] for case in group.get("promql_expr_test", [])
    )
    untested = [r["record"] for r in _recording_rules() if not re.search(re.escape(r["record"]) + r"(?![\w:])", exprs)]
    assert untested == []


def test_behaviour_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    """Mutation check: doubling the idle threshold must break the behaviour tests."""
    if PROMTOOL is None:
        pytest.skip("promtool not installed")
    tests_dir = _stripped_tree(tmp_path)
    stripped = tmp_path / "alerts" / ALERT_RULES.name
    text = stripped.read_text()
    assert "accel_idle_seconds >= 3600" in text
    stripped.write_text(text.replace("accel_idle_seconds >= 3600", "accel_idle_seconds >= 7200"))
    result = _run([PROMTOOL, "test", "rules", "cost_alerts.yml"], cwd=tests_dir)
    assert result.returncode != 0
    assert "AcceleratorIdle" in result.stdout + result.stderr


# --- Alertmanager ---------------------------------------------------------------------------------

# (labels, the receivers they must reach)
ROUTES: list[tuple[list[str], str]] = [
    (["alertname=AcceleratorIdle", "severity=warning", "team=ml-research"], "ml-research"),
    (["alertname=AcceleratorAbandoned", "severity=warning", "team=inference"], "inference"),
    (["alertname=AcceleratorIdle", "severity=critical", "team=ml-research"], "ml-research-pager"),
    (["alertname=AcceleratorIdle", "severity=critical", "team=inference"], "inference-pager"),
    (["alertname=AcceleratorHostIdle", "severity=warning"], "finops"),
    (["alertname=AcceleratorHostIdle", "severity=warning", "team=inference"], "inference"),
    (["alertname=AcceleratorTeamIdleSpendHigh", "severity=warning", "team=web-search"], "finops"),
    # Issue 11: the main story reaches a person: the owning team, else FinOps.
    (["alertname=AcceleratorHostUnderutilized", "severity=warning", "team=ml-research"], "ml-research"),
    (["alertname=AcceleratorHostUnderutilized", "severity=warning", "team=inference"], "inference"),
    (["alertname=AcceleratorHostUnderutilized", "severity=warning", "team=web-search"], "finops"),
    (["alertname=AcceleratorHostUnderutilized", "severity=warning"], "finops"),
    (["alertname=AcceleratorFleetUnderutilized", "severity=warning"], "finops"),
    (["alertname=AcceleratorPriceUnknown", "severity=info", "team=ml-research"], "null"),
    (["alertname=AcceleratorDeviceLost", "severity=critical"], "platform-pager"),
    (["alertname=AcceleratorXidCritical", "severity=critical", "xid=79"], "platform-pager"),
    (["alertname=AcceleratorExporterDown", "severity=warning"], "platform"),
    (["alertname=AcceleratorExporterStale", "severity=warning"], "platform"),
    (["alertname=AcceleratorExporterCollectorFailing", "severity=warning"], "platform"),
    (["alertname=AcceleratorExporterConfigReloadFailed", "severity=warning"], "platform"),
]


def _alert_severities() -> dict[str, str]:
    return {r["alert"]: r["labels"]["severity"] for r in _alert_rules()}


@needs_amtool
@pytest.mark.parametrize("alert", sorted(_alert_severities()))
def test_every_alert_but_info_reaches_a_person(alert: str) -> None:
    """Issue 11: the fleet story went to `null`. Only info alerts may, with or without a team."""
    assert AMTOOL is not None
    severity = _alert_severities()[alert]
    for team in ([], ["team=ml-research"], ["team=unlisted"]):
        args = [AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}"]
        result = _run([*args, f"alertname={alert}", f"severity={severity}", *team])
        assert result.returncode == 0, result.stdout + result.stderr
        assert (result.stdout.strip() == "null") == (severity == "info"), (alert, team, result.stdout)


@needs_amtool
def test_amtool_check_config() -> None:
    assert AMTOOL is not None
    result = _run([AMTOOL, "check-config", str(AM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
@pytest.mark.parametrize(("labels", "receiver"), ROUTES, ids=[" ".join(labels) for labels, _ in ROUTES])
def test_amtool_routes(labels: list[str], receiver: str) -> None:
    assert AMTOOL is not None
    args = [AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", f"--verify.receivers={receiver}"]
    result = _run([*args, *labels])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


@needs_amtool
def test_amtool_detects_a_wrong_receiver() -> None:
    """The route loop above could pass vacuously if amtool ignored --verify.receivers."""
    assert AMTOOL is not None
    args = [AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", "--verify.receivers=finops"]
    result = _run([*args, "alertname=AcceleratorIdle", "severity=critical", "team=ml-research"])
    assert result.returncode == 1


def test_every_receiver_is_reached() -> None:
    receivers = {r["name"] for r in _load(AM_CONFIG)["receivers"]}
    assert receivers == {receiver for _, receiver in ROUTES}


def test_alertmanager_uses_only_new_matcher_syntax() -> None:
    text = AM_CONFIG.read_text()
    for deprecated in ("match:", "match_re:", "source_match:", "source_match_re:", "target_match:", "target_match_re:"):
        assert re.search(rf"^\s*-?\s*{deprecated}", text, re.M) is None, deprecated


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    m = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', matcher)
    assert m, matcher
    name, op, value = m.groups()
    got = labels.get(name, "")
    return {
        "=": got == value,
        "!=": got != value,
        "=~": re.fullmatch(value, got) is not None,
        "!~": re.fullmatch(value, got) is None,
    }[op]


def test_every_inhibition_can_match() -> None:
    """Issue 11: "critical mutes warning of the same alertname" could never match (no alert has two
    severities). Every source and target must match a shipped alert, every alternative of an
    alertname regex must name one, and a rule with `equal: [alertname, ...]` needs an alert that
    is both a source and a target (else source and target are different alerts)."""
    alerts = [{"alertname": name, "severity": sev} for name, sev in _alert_severities().items()]
    for rule in _load(AM_CONFIG)["inhibit_rules"]:
        sources = [a for a in alerts if all(_matches(m, a) for m in rule["source_matchers"])]
        targets = [a for a in alerts if all(_matches(m, a) for m in rule["target_matchers"])]
        assert sources and targets, rule
        both = {a["alertname"] for a in sources} & {a["alertname"] for a in targets}
        assert bool(both) == ("alertname" in rule["equal"]), rule
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith("alertname=~"):
                for name in matcher.split('"')[1].split("|"):
                    assert name in _alert_severities(), f"{name} in {matcher} is no alert"


def test_inhibitions() -> None:
    rules = _load(AM_CONFIG)["inhibit_rules"]
    by_source: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for rule in rules:
        by_source.setdefault(tuple(rule["source_matchers"]), []).append(rule)
    (down,) = by_source[('alertname="AcceleratorExporterDown"',)]
    assert "instance" in down["equal"]
    for cost_alert in (
        "AcceleratorIdle",
        "AcceleratorHostIdle",
        "AcceleratorHostUnderutilized",
        "AcceleratorAbandoned",
    ):
        assert re.search(rf"\b{cost_alert}\b", down["target_matchers"][0])
    host, team = by_source[('alertname="AcceleratorHostIdle"',)]
    for muted in ("AcceleratorIdle", "AcceleratorAbandoned", "AcceleratorLongRunningLowUtilization"):
        assert re.search(rf"\b{muted}\b", host["target_matchers"][0])
    assert host["equal"] == ["job", "instance"]
    assert team["equal"] == ["job", "team"]
