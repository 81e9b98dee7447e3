"""The real exporter on every built-in scenario: `promtool check metrics` is clean, and our own
naming rules (that promtool does not know) hold. Also: docs/metrics.md matches the catalogue."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import ROOT, ExporterProcess, start_exporter, wait_until
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalogue import BY_NAME, CATALOGUE
from exporter.exposition.reference import render_reference
from exporter.sim.scenario import builtin_scenarios
from exporter.sources.registry import SOURCES

POLLS_BEFORE_SCRAPING = 2  # at the 1 s interval below
FORBIDDEN_SUFFIXES = ("_percent", "_mib", "_milliwatts", "_kib", "_gib", "_mb", "_milliseconds", "_celsius_total")
SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")


LAST_SAMPLE = re.compile(r'^accel_exporter_last_sample_timestamp_seconds\{collector="([^"]*)"\} (\S+)$', re.M)
DEVICE_COLLECTORS = frozenset(spec.name for spec in SOURCES)  # slurm, metadata etc. sample only on demand


def sampled_since(metrics: str, unix_time: float) -> bool:
    """Whether every device collector in `metrics` has a sample newer than `unix_time`."""
    times = [float(value) for name, value in LAST_SAMPLE.findall(metrics) if name in DEVICE_COLLECTORS]
    return bool(times) and min(times) >= unix_time


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One scrape of every built-in scenario, taken 2.5 s after start (several polls at 1 s)."""
    folder = tmp_path_factory.mktemp("scenarios")
    running: dict[str, ExporterProcess] = {}
    try:
        # Start them all at once: the suite pays for one start-up, not one per scenario.
        for name in builtin_scenarios():
            running[name] = start_exporter(
                ["--demo", name, "--collector.interval", "1s"], folder / f"{name}.log", wait=False
            )
        for exporter in running.values():
            exporter.wait_ready()
        # Money and busy counters exist from the second poll: wait until every collector of every
        # exporter has sampled POLLS_BEFORE_SCRAPING more times since all were ready.
        ready = time.time()
        for name, exporter in running.items():
            wait_until(
                lambda exporter=exporter: sampled_since(exporter.metrics(), ready + POLLS_BEFORE_SCRAPING),
                f"{name}: every collector sampled {POLLS_BEFORE_SCRAPING} polls after start-up",
                explain=exporter.log,
            )
        yield {name: exporter.metrics() for name, exporter in running.items()}
    finally:
        for exporter in running.values():
            exporter.stop()


def test_every_builtin_scenario_is_scraped(scrapes: dict[str, str]) -> None:
    assert sorted(scrapes) == builtin_scenarios()
    for name, text in scrapes.items():
        assert "accel_device_info{" in text, name
        assert 'accel_exporter_build_info{version="' in text, name


@needs_promtool
@pytest.mark.parametrize("scenario", builtin_scenarios())
def test_promtool_check_metrics_is_clean(scrapes: dict[str, str], scenario: str) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrapes[scenario],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@pytest.mark.parametrize("scenario", builtin_scenarios())
def test_naming_rules_promtool_does_not_check(scrapes: dict[str, str], scenario: str) -> None:
    text = scrapes[scenario]
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    sample_names = {
        m.group(1) for line in text.splitlines() if not line.startswith("#") and (m := SAMPLE_NAME.match(line))
    }
    ours = {n for n in sample_names if n.startswith("accel_")}
    assert ours
    for name in ours:
        assert not name.endswith(FORBIDDEN_SUFFIXES), name  # base units only
        assert "_percent" not in name and "_mib" not in name and "_milliwatts" not in name, name
        assert name in BY_NAME, f"{name} is exposed but not in exporter/catalogue.py"
        kind = types.get(name)
        if name.endswith("_total"):
            assert kind == "counter", (name, kind)  # _total only on counters
        else:
            assert kind != "counter", name
        assert kind == BY_NAME[name].type, (name, kind)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("accel_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_ratio"):
                assert 0.0 <= sample.value <= 1.0, sample  # ratios are 0-1
            assert set(sample.labels) == set(BY_NAME[sample.name].labels), sample
            assert sample.value == sample.value, sample  # never NaN


def test_mig_scenario_has_no_mig_utilization(scrapes: dict[str, str]) -> None:
    text = scrapes["a100-mig"]
    assert 'accel_device_info{device="nvidia0-mig1"' in text
    assert 'accel_memory_used_bytes{device="nvidia0-mig1"}' in text
    assert 'accel_utilization_ratio{device="nvidia0-mig' not in text
    assert 'accel_utilization_ratio{device="nvidia1"}' in text


def test_catalogue_itself_follows_the_rules() -> None:
    names = [s.name for s in CATALOGUE]
    assert len(names) == len(set(names))
    for s in CATALOGUE:
        assert s.name.startswith("accel_"), s.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", s.name), s.name
        assert s.name.endswith("_total") == (s.type == "counter"), s.name
        assert not s.name.endswith(FORBIDDEN_SUFFIXES), s.name
        assert s.help.strip() and "\n" not in s.help, s.name
        assert len(set(s.labels)) == len(s.labels), s.name


def test_docs_metrics_md_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == render_reference(), "docs/metrics.md is stale: run `make docs`"
    for s in CATALOGUE:
        assert f"`{s.name}`" in committed
