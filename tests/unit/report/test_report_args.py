"""The report's flag parsing: durations, times, selectors, and the CLI's dispatch to the subcommand."""

from __future__ import annotations

import pytest

from exporter.cli import main
from exporter.report.args import check_selector, parse_duration, parse_options, parse_time
from exporter.report.errors import ReportUsageError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800), ("1h30m", 5400), ("90s", 90), ("1w", 604800), ("500ms", 0.5), ("30d", 2592000)],
)
def test_prometheus_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "7 d", "d7", "1h 30m", "-1h", "0s", "7days", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="Prometheus duration"):
        parse_duration(text)


def test_times_in_rfc3339_or_unix_seconds() -> None:
    assert parse_time("2026-01-31T00:00:00Z") == 1769817600
    assert parse_time("2026-01-31T01:00:00+01:00") == 1769817600
    assert parse_time("1769817600") == 1769817600
    assert parse_time("1769817600.5") == 1769817600.5
    with pytest.raises(ValueError, match="time zone"):
        parse_time("2026-01-31T00:00:00")
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("last tuesday")


def test_selectors() -> None:
    assert check_selector('job="accel"') == 'job="accel"'
    assert check_selector('{job="accel", cluster=~"eu-.*"}') == 'job="accel", cluster=~"eu-.*"'
    assert check_selector('team="a,b"') == 'team="a,b"'
    assert check_selector("") == ""
    for bad in ("job=accel", 'job="accel"}{', 'job="a" or vector(1)', '1job="x"'):
        with pytest.raises(ValueError, match="label matcher"):
            check_selector(bad)


def test_options_defaults_and_end() -> None:
    options = parse_options(["--prometheus.url", "http://prom:9090/"], now=1000.0)
    assert options.client.url == "http://prom:9090"
    assert options.range_seconds == 7 * 86400 and options.end == 1000.0
    assert options.output_format == "markdown" and options.client.concurrency == 4
    options = parse_options(["--prometheus.url", "http://p", "--end", "2026-01-31T00:00:00Z", "--range", "30d"])
    assert options.end == 1769817600 and options.range_seconds == 30 * 86400
    with pytest.raises(ReportUsageError, match=r"--prometheus\.concurrency"):
        parse_options(["--prometheus.url", "http://p", "--prometheus.concurrency", "0"])


def test_the_cli_dispatches_report_and_keeps_its_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--range", "bogus", "--prometheus.url", "http://p"]) == 2
    assert "accel-cost-exporter report: error: --range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    assert "--prometheus.url" in capsys.readouterr().out
    # The exporter's own flags are untouched: `report` is only a subcommand in first position.
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "accel-cost-exporter" in capsys.readouterr().out
