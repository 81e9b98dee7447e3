"""`accel-cost-exporter report` against a real Prometheus on a backfilled TSDB whose ground truth
the test fleet computes (tests/report_helpers.py): money, findings, recommendations, every format,
partial data and an empty selection."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pngcheck import png_pixels
from report_helpers import (
    BUSY_ID,
    END,
    EXPECTED_FINDINGS,
    G5_12,
    P4D,
    RANGE,
    START,
    Server,
    chromium,
    json_report,
    run_report,
    serve_prometheus,
    window_args,
)

from tests.fakes.ec2_instances import Ec2Instance, Ec2InstancesFake, RegionBehaviour
from tests.fakes.server import serve

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs prometheus and promtool (apt-get install prometheus)",
)
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve_prometheus(tmp_path_factory.mktemp("report-prometheus"))


@pytest.fixture(scope="module")
def report(server: Server) -> dict[str, Any]:
    return json_report(server.url)


def _close(actual: float, expected: float, tolerance: float = 0.005) -> bool:
    return abs(actual - expected) <= tolerance * abs(expected) + 1e-6


def _accel_truth(server: Server, kind: str) -> dict[str, float]:
    jobs = {h.instance: h.job for h in server.hosts}
    values: dict[str, float] = getattr(server.truth, kind)
    return {k: v for k, v in values.items() if jobs[k] == "accel"}


def test_totals_match_the_ground_truth(report: dict[str, Any], server: Server) -> None:
    totals = report["totals"]
    assert totals["range_seconds"] == RANGE
    assert totals["start"] and totals["end"]
    for key, kind in (("spend_dollars", "spend"), ("idle_dollars", "idle"), ("waste_dollars", "waste")):
        expected = sum(_accel_truth(server, kind).values())
        assert expected > 0
        assert _close(totals[key], expected), (key, totals[key], expected)
    assert report["partial"] is False, report["problems"]


def test_each_host_has_its_money_and_the_counter_reset_is_handled(report: dict[str, Any], server: Server) -> None:
    hosts = {h["instance"]: h for h in report["hosts"]}
    assert set(hosts) == {h.instance for h in server.hosts if h.job == "accel"}
    for instance, spend in _accel_truth(server, "spend").items():
        if spend:
            assert _close(hosts[instance]["spend_dollars"], spend), instance
            assert _close(hosts[instance]["waste_dollars"], server.truth.waste[instance]), instance
    reset = hosts["h-reset:11094"]
    assert reset["spend_dollars"] == pytest.approx(G6_1_PER_RANGE, rel=0.005)
    busy = hosts["h-busy:11094"]
    assert busy["utilization_mean"] == pytest.approx(0.95, abs=0.005)
    assert busy["utilization_p95"] == pytest.approx(0.95, abs=0.005)
    assert busy["memory_used_peak_bytes"] == 38 * 2**30
    assert busy["devices"] == 8 and busy["teams"] == ["search"] and busy["instance_type"] == "p4d.24xlarge"


G6_1_PER_RANGE = 0.8048 * RANGE / 3600


def test_an_unpriced_host_is_listed_with_null_money(report: dict[str, Any]) -> None:
    hosts = {h["instance"]: h for h in report["hosts"]}
    unpriced = hosts["h-unpriced:11094"]
    assert unpriced["price_source"] == "none"
    assert unpriced["spend_dollars"] is None and unpriced["idle_dollars"] is None and unpriced["waste_dollars"] is None
    assert unpriced["utilization_mean"] == pytest.approx(0.5, abs=0.005)


def test_each_finding_kind_where_it_should_be_and_nowhere_else(report: dict[str, Any], server: Server) -> None:
    found = {(f["kind"], f["instance"], f.get("device")) for f in report["findings"]}
    assert found == EXPECTED_FINDINGS
    by_key = {(f["kind"], f["instance"]): f for f in report["findings"]}
    idle = by_key[("idle_host", "h-idle:11094")]
    assert _close(idle["dollars"], server.truth.idle["h-idle:11094"])
    assert _close(idle["dollars_per_month"], idle["dollars"] * 30 * 86400 / RANGE)
    assert idle["team"] == "recsys" and idle["evidence"]
    abandoned = by_key[("abandoned", "h-abandoned:11094")]
    assert _close(abandoned["dollars"], server.truth.idle["h-abandoned:11094"])
    assert abandoned["since"] == _rfc3339(END - 20 * 86400)
    held = by_key[("held_idle", "h-held:11094")]
    assert _close(held["dollars"], G5_12 / 4 * RANGE / 3600)
    under = by_key[("underutilized", "h-under-1:11094")]
    assert _close(under["dollars"], server.truth.waste["h-under-1:11094"])
    longrun = by_key[("long_running_unchecked", "h-longrun:11094")]
    assert _close(longrun["dollars"], server.truth.waste["h-longrun:11094"])


def _rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def test_recommendations_save_what_the_hand_computation_says(report: dict[str, Any]) -> None:
    recs = {(r["action"], r.get("instance") or r.get("group") or r.get("device")): r for r in report["recommendations"]}
    expected = {
        ("stop", "h-idle:11094"): P4D * 720,
        ("stop the abandoned process and reuse the device", "h-abandoned:11094/nvidia0"): P4D / 8 * 720,
        # ranking: p95 busy 1.6 + 2.0 = 3.6 devices / 0.7 = 5.14 -> 6 devices -> 1 host of 8 instead of 2.
        ("shrink", "p4d.24xlarge team=ranking"): 1 * P4D * 720,
        # 12 GiB peak x 1.1 fits a T4 (16 GiB): g4dn.metal, 8 x T4, $7.824/h.
        ("move to a cheaper instance type", "h-smallmem:11094"): (P4D - 7.824) * 720,
    }
    assert set(recs) == set(expected)
    for key, savings in expected.items():
        assert recs[key]["monthly_savings_dollars"] == pytest.approx(savings, rel=1e-6), key
        assert recs[key]["assumptions"], key
    assert "g4dn.metal" in recs[("move to a cheaper instance type", "h-smallmem:11094")]["proposed"]
    assert "NOT assumed as fast" in recs[("move to a cheaper instance type", "h-smallmem:11094")]["assumptions"]
    assert "1 x p4d.24xlarge" in recs[("shrink", "p4d.24xlarge team=ranking")]["proposed"]


def test_teams_carry_money_per_team_and_workload(report: dict[str, Any], server: Server) -> None:
    teams = {(t["team"], t["workload"]): t for t in report["teams"]}
    assert ("nlp", "batch") in teams and ("recsys", "training") in teams
    assert _close(teams[("recsys", "training")]["idle_dollars"], server.truth.idle["h-idle:11094"])
    assert _close(sum(t["spend_dollars"] for t in report["teams"]), report["totals"]["spend_dollars"], 1e-9)


def test_thirty_minute_scrapes_give_the_same_money(server: Server) -> None:
    report = json_report(server.url, 'job="sparse"')
    expected = server.truth.spend["s-idle:11094"] + server.truth.spend["s-busy:11094"]
    assert _close(report["totals"]["spend_dollars"], expected)
    assert {(f["kind"], f["instance"]) for f in report["findings"]} == {("idle_host", "s-idle:11094")}
    hosts = {h["instance"]: h for h in report["hosts"]}
    assert hosts["s-busy:11094"]["utilization_mean"] == pytest.approx(0.9, abs=0.005)
    assert report["partial"] is False, report["problems"]


def test_markdown_is_the_default_and_names_every_finding(server: Server) -> None:
    result = run_report(window_args(server.url, "--selector", 'job="accel"'))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("# Accelerator waste audit")
    for needle in ("## Findings", "## Recommendations", "idle_host", "abandoned", "h-unpriced:11094", "n/a"):
        assert needle in text
    assert "PARTIAL" not in text


def test_csv_has_one_row_per_host_and_per_finding(server: Server, report: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    result = run_report(window_args(server.url, "--format", "csv", "--selector", 'job="accel"', "--output", str(out)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sum(r["row"] == "host" for r in rows) == len(report["hosts"])
    assert sum(r["row"] == "finding" for r in rows) == len(report["findings"])
    assert {r["partial"] for r in rows} == {"0"}


def test_progress_goes_to_stderr_unless_quiet(server: Server) -> None:
    args = [a for a in window_args(server.url, "--format", "json") if a != "--quiet"]
    result = run_report(args)
    assert result.returncode == 0, result.stderr
    assert "queries 1/" in result.stderr and "queries 16/16" in result.stderr
    json.loads(result.stdout)


def test_a_range_with_gaps_is_reported_partial_in_every_format(server: Server) -> None:
    outputs = {}
    for fmt in ("json", "markdown", "csv", "html"):
        result = run_report(window_args(server.url, "--format", fmt, "--selector", 'job="gappy"'))
        assert result.returncode == 0, result.stderr
        assert "PARTIAL" in result.stderr and "h-gap:11094" in result.stderr
        outputs[fmt] = result.stdout
    report = json.loads(outputs["json"])
    assert report["partial"] is True
    assert any("h-gap:11094" in p and "6 h" in p for p in report["problems"]), report["problems"]
    assert "PARTIAL REPORT" in outputs["markdown"] and "h-gap:11094" in outputs["markdown"]
    assert "PARTIAL REPORT" in outputs["html"]
    assert {r["partial"] for r in csv.DictReader(io.StringIO(outputs["csv"]))} == {"1"}


def test_no_exporter_series_in_the_range_fails_with_one_line(server: Server) -> None:
    result = run_report(window_args(server.url, "--selector", 'job="nothing"'))
    assert result.returncode == 1
    assert "no exporter series" in result.stderr and 'job="nothing"' in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    earlier = run_report(["--prometheus.url", server.url, "--range", "1d", "--end", str(int(START - 30 * 86400))])
    assert earlier.returncode == 1 and "no exporter series" in earlier.stderr


def _console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_html_is_self_contained_and_renders_in_headless_chromium(server: Server, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = run_report(window_args(server.url, "--format", "html", "--selector", 'job="accel"', "--output", str(page)))
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    # Nothing to fetch at view time: no scripts, no external references.
    for needle in ("<script", "http://", "https://", " src=", "@import", "url("):
        assert needle not in html.replace(server.url, ""), needle
    for needle in ("Spend (blue) and waste (red) by team", "Top wasting hosts", "Utilization over the range", "<svg"):
        assert needle in html
    assert "h-idle:11094" in html and "g4dn.metal" in html
    shot = tmp_path / "report.png"
    log = chromium(page, shot)
    assert _console_lines(log) == [], log
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2400)
    colours = {row[x : x + 3] for row in rows[::8] for x in range(0, len(row), 24)}
    inked = sum(1 for row in rows[::8] for x in range(0, len(row), 24) if row[x : x + 3] != b"\xff\xff\xff")
    assert len(colours) > 10, "the screenshot is (nearly) blank"
    assert inked > 500, "the screenshot is (nearly) blank"


@needs_chromium
def test_the_chromium_check_sees_console_errors_and_blank_pages(tmp_path: Path) -> None:
    # The checks above must be able to fail: a page with a console error, and a blank page.
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><script>console.error("broken chart")</script></body></html>')
    shot = tmp_path / "bad.png"
    assert any("broken chart" in line for line in _console_lines(chromium(page, shot)))
    _, _, rows = png_pixels(shot.read_bytes())
    assert {row[x : x + 3] for row in rows[::8] for x in range(0, len(row), 24)} == {b"\xff\xff\xff"}


def test_aws_instances_without_an_exporter_are_unmonitored_findings(server: Server, aws_env: None) -> None:
    launched = END - 21 * 86400
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(launched))
    fake = Ec2InstancesFake(
        regions={
            "us-east-1": RegionBehaviour(
                instances=[
                    Ec2Instance(BUSY_ID, "p4d.24xlarge", stamp),
                    Ec2Instance("i-0dark0000000000001", "p4d.24xlarge", stamp, tags={"Team": "ml", "Workload": "eval"}),
                    Ec2Instance("i-0dark0000000000002", "g6e.xlarge", stamp),
                ],
                page_size=1,
                throttle_next=1,
            ),
            "eu-west-1": RegionBehaviour(deny=True),
        }
    )
    with serve(fake.app()) as ec2:
        args = ["--format", "json", "--selector", 'job="accel"', "--aws.regions", "us-east-1,eu-west-1"]
        result = run_report(window_args(server.url, *args, "--aws.endpoint-url", ec2.url))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    unmonitored = {f["instance"]: f for f in report["findings"] if f["kind"] == "unmonitored"}
    assert set(unmonitored) == {"i-0dark0000000000001", "i-0dark0000000000002"}
    dark = unmonitored["i-0dark0000000000001"]
    assert dark["team"] == "ml" and dark["since"] == _rfc3339(launched)
    assert dark["dollars"] == pytest.approx(P4D * 21 * 24)
    assert dark["dollars_per_month"] == pytest.approx(P4D * 720)
    assert "Workload=eval" in dark["evidence"] and "504 h" in dark["evidence"]
    # The denied region is reported, not fatal: the report is partial and says why.
    assert report["partial"] is True
    assert any("eu-west-1" in p and "ec2:DescribeInstances" in p for p in report["problems"])


def test_the_timeline_uses_the_bundles_recording_rule_where_it_exists(server: Server) -> None:
    # r-host's recorded utilization says 50 % while its counters say 70 %: the timeline follows the
    # rule, the money and the mean follow the counters.
    report = json_report(server.url, 'job="ruled"')
    timeline = report["utilization_timeline"]["hosts"]["r-host:11094"]
    assert timeline and all(v == pytest.approx(0.5) for v in timeline)
    host = report["hosts"][0]
    assert host["utilization_mean"] == pytest.approx(0.7, abs=0.005)
    assert host["spend_dollars"] == pytest.approx(server.truth.spend["r-host:11094"], rel=0.005)
    raw = json_report(server.url, 'job="accel"')["utilization_timeline"]["hosts"]["h-busy:11094"]
    assert all(v == pytest.approx(0.95, abs=0.005) for v in raw)
