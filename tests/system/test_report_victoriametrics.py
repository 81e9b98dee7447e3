"""The report against a single-node VictoriaMetrics (Debian `victoria-metrics`) on loopback: the
same money and findings as from Prometheus, proving the query API compatibility."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from report_helpers import EXPECTED_FINDINGS, P4D, Server, json_report, serve_victoria_metrics

pytestmark = pytest.mark.skipif(
    shutil.which("victoria-metrics") is None, reason="needs victoria-metrics (apt-get install victoria-metrics)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_victoria_metrics(tmp_path_factory.mktemp("report-vm"))


@pytest.fixture(scope="module")
def report(server: Server) -> dict[str, Any]:
    return json_report(server.url)


def test_totals_and_hosts_match_the_ground_truth(report: dict[str, Any], server: Server) -> None:
    jobs = {h.instance: h.job for h in server.hosts}
    for key, kind in (("spend_dollars", "spend"), ("idle_dollars", "idle"), ("waste_dollars", "waste")):
        expected = sum(v for k, v in getattr(server.truth, kind).items() if jobs[k] == "accel")
        assert report["totals"][key] == pytest.approx(expected, rel=0.005), key
    hosts = {h["instance"]: h for h in report["hosts"]}
    assert hosts["h-unpriced:11094"]["spend_dollars"] is None
    assert hosts["h-reset:11094"]["spend_dollars"] == pytest.approx(server.truth.spend["h-reset:11094"], rel=0.005)
    assert report["partial"] is False, report["problems"]


def test_the_same_findings_and_recommendations_as_from_prometheus(report: dict[str, Any]) -> None:
    assert {(f["kind"], f["instance"], f.get("device")) for f in report["findings"]} == EXPECTED_FINDINGS
    savings = {
        r.get("instance") or r.get("group") or r.get("device"): r["monthly_savings_dollars"]
        for r in report["recommendations"]
    }
    assert savings["h-idle:11094"] == pytest.approx(P4D * 720)
    assert savings["p4d.24xlarge team=ranking"] == pytest.approx(P4D * 720)
    assert savings["h-smallmem:11094"] == pytest.approx((P4D - 7.824) * 720)


def test_gaps_are_reported_partial(server: Server) -> None:
    report = json_report(server.url, 'job="gappy"')
    assert report["partial"] is True and "h-gap:11094" in report["problems"][0]
