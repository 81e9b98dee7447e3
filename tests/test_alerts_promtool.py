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

ROOT = Path(__file__).resolve().parent.parent
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
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


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
    (["alertname=AcceleratorTeamIdleSpendHigh", "severity=warning", "team=web-search"], "finops"),
    (["alertname=AcceleratorFleetUnderutilized", "severity=info"], "null"),
    (["alertname=AcceleratorPriceUnknown", "severity=info", "team=ml-research"], "null"),
    (["alertname=AcceleratorDeviceLost", "severity=critical"], "platform-pager"),
    (["alertname=AcceleratorXidCritical", "severity=critical", "xid=79"], "platform-pager"),
    (["alertname=AcceleratorExporterDown", "severity=warning"], "platform"),
    (["alertname=AcceleratorExporterStale", "severity=warning"], "platform"),
    (["alertname=AcceleratorExporterCollectorFailing", "severity=warning"], "platform"),
]


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


def test_inhibitions() -> None:
    rules = _load(AM_CONFIG)["inhibit_rules"]
    by_source = {tuple(r["source_matchers"]): r for r in rules}
    crit = by_source[('severity="critical"',)]
    assert crit["target_matchers"] == ['severity=~"warning|info"']
    assert "instance" in crit["equal"]
    down = by_source[('alertname="AcceleratorExporterDown"',)]
    assert "instance" in down["equal"]
    for cost_alert in ("AcceleratorIdle", "AcceleratorHostIdle", "AcceleratorAbandoned"):
        assert re.search(rf"\b{cost_alert}\b", down["target_matchers"][0])
    host = by_source[('alertname="AcceleratorHostIdle"',)]
    assert host["target_matchers"] == ['alertname=~"AcceleratorIdle|AcceleratorAbandoned"']
    assert "instance" in host["equal"]
