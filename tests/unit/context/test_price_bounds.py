"""Every price, from any source (config, AWS, the state cache, the built-in table), is finite and within bounds.

A bad one is refused: the config with a message naming the key; an AWS answer or a cache entry is
logged, counted in accel_exporter_errors_total{collector="price"} and the next source is used. An
unreadable cache file never stops the exporter.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, ExporterProcess, exporter_env, within

from exporter.clock import ManualClock
from exporter.config import ConfigInvalid, parse_config
from exporter.context.errors import ErrorCounts
from exporter.context.model import HostIdentity
from exporter.context.price.builtin_prices import builtin_table
from exporter.context.price.price_bounds import MAX_DOLLARS_PER_HOUR, MIN_DOLLARS_PER_HOUR, price_problem
from exporter.context.price.price_cache import FILE_NAME, PriceCache, cache_key
from exporter.context.price.pricing import PriceResolver

EPOCH = 1784548800.0  # 2026-07-20T12:00:00Z
P4D = HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="us-east-1", zone="us-east-1a")
BUILTIN_P4D = 21.957642
ON_DEMAND_KEY = cache_key("aws", "p4d.24xlarge", "us-east-1", "on-demand")
# Out of bounds: an overflow to +Inf, absurdly large, absurdly small but positive.
ABSURD = [math.inf, 1e308, 1e-300, MAX_DOLLARS_PER_HOUR * 1.01, MIN_DOLLARS_PER_HOUR / 2]


def strict_json(text: str) -> Any:
    """json.loads that refuses the non-JSON constants NaN, Infinity and -Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# --- the bounds themselves --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [MIN_DOLLARS_PER_HOUR, 0.0042, 21.957642, 407.0, MAX_DOLLARS_PER_HOUR])
def test_real_prices_are_within_bounds(value: float) -> None:
    assert price_problem(value) is None


@pytest.mark.parametrize("value", [*ABSURD, -math.inf, math.nan, 0.0, -1.0])
def test_absurd_prices_are_refused_with_a_reason(value: float) -> None:
    problem = price_problem(value)
    assert problem is not None
    assert "finite" in problem or "USD per hour" in problem


def test_the_shipped_table_is_within_bounds_and_nothing_is_dropped() -> None:
    raw = json.loads(resources.files("exporter.context.price").joinpath("price_table.json").read_text(encoding="utf-8"))
    assert len(builtin_table().prices) == len(raw["prices"])
    assert all(price_problem(p) is None for p in builtin_table().prices.values())


# --- config ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("section", ["instance_types", "device_models"])
@pytest.mark.parametrize("value", [1e308, 1e-300, 1001, 10**400, float("inf")])
def test_config_price_out_of_bounds_is_a_validation_error_naming_the_key(section: str, value: object) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"pricing": {section: {"p4d.24xlarge": value}}}, source="c.yml")
    (error,) = info.value.errors
    assert f"'pricing.{section}.p4d.24xlarge'" in error
    assert "from 0.0001 to 1000 USD per hour" in error


def test_config_prices_at_the_bounds_are_accepted() -> None:
    config = parse_config({"pricing": {"instance_types": {"a": MIN_DOLLARS_PER_HOUR, "b": MAX_DOLLARS_PER_HOUR}}})
    assert dict(config.pricing.instance_types) == {"a": MIN_DOLLARS_PER_HOUR, "b": MAX_DOLLARS_PER_HOUR}


# --- the state cache -------------------------------------------------------------------------------


def write_cache(directory: Path, dollars_per_hour: str) -> None:
    """A cache file with one fresh on-demand p4d entry; the price is spliced in as raw JSON text."""
    entry = f'{{"dollars_per_hour": {dollars_per_hour}, "source": "aws-pricing-api", "lifecycle": "on-demand", '
    entry += f'"fetched_at": {EPOCH - 60}}}'
    (directory / FILE_NAME).write_text(f'{{"version": 1, "entries": {{"{ON_DEMAND_KEY}": {entry}}}}}')


def offline_resolver(directory: Path) -> tuple[PriceResolver, ErrorCounts]:
    """A resolver over the cache in `directory`; resolve_offline never calls its (closed) endpoint."""
    config = parse_config({"pricing": {"aws": {"endpoint_url": "http://127.0.0.1:9"}}})
    errors = ErrorCounts()
    return PriceResolver(config.pricing, ManualClock(epoch=EPOCH), errors, PriceCache(str(directory))), errors


def test_a_good_cache_entry_is_used(tmp_path: Path) -> None:
    write_cache(tmp_path, "20.5")
    resolver, errors = offline_resolver(tmp_path)
    quote = resolver.resolve_offline(P4D)
    assert (quote.source, quote.dollars_per_hour, quote.cached) == ("aws-pricing-api", 20.5, True)
    assert dict(errors.snapshot()) == {}


@pytest.mark.parametrize("raw", ["Infinity", "1e999", "1e308", "1e-300", "NaN", "-Infinity"])
def test_an_absurd_cached_price_is_refused_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, raw: str
) -> None:
    write_cache(tmp_path, raw)
    with caplog.at_level(logging.WARNING, logger="exporter.context.price.price_cache"):
        resolver, errors = offline_resolver(tmp_path)
    quote = resolver.resolve_offline(P4D)
    assert (quote.source, quote.dollars_per_hour) == ("builtin", BUILTIN_P4D)
    assert dict(errors.snapshot()) == {("price", "price_out_of_bounds"): 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert "ignoring 1 entry" in line and ON_DEMAND_KEY in line


def test_malformed_cache_entries_are_counted_in_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    entries = {f"k{i}": ["not", "an", "object"] for i in range(10)}
    (tmp_path / FILE_NAME).write_text(json.dumps({"version": 1, "entries": entries}))
    with caplog.at_level(logging.WARNING, logger="exporter.context.price.price_cache"):
        _, errors = offline_resolver(tmp_path)
    assert dict(errors.snapshot()) == {("price", "cache_bad_entry"): 10}
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"version": 1, "entries": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001, "nested too deeply"),
        ("{ half a file", "Expecting"),
        ('{"version": 1, "entries": {"k": {"dollars_per_hour": 1' + "0" * 5000 + "}}}", "digits"),
        (b"\xff\xfe garbage", "utf-8"),
        (" " * (2 * 1024 * 1024) + "{}", "larger than"),
        ('{"version": 99, "entries": {}}', "unknown format"),
        ("[]", "unknown format"),
    ],
)
def test_an_unreadable_cache_is_logged_once_counted_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes, why: str
) -> None:
    path = tmp_path / FILE_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="exporter.context.price.price_cache"):
        resolver, errors = offline_resolver(tmp_path)
    assert resolver.resolve_offline(P4D).source == "builtin"
    assert dict(errors.snapshot()) == {("price", "cache_unreadable"): 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(path) in line and why in line


def test_a_fifo_in_place_of_the_cache_is_ignored_not_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / FILE_NAME)  # opening it for reading would block until a writer came
    with caplog.at_level(logging.WARNING, logger="exporter.context.price.price_cache"):
        resolver, errors = within(20, lambda: offline_resolver(tmp_path))
    assert resolver.resolve_offline(P4D).source == "builtin"
    assert dict(errors.snapshot()) == {("price", "cache_unreadable"): 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert "FIFO (named pipe)" in line


# --- the daemon ------------------------------------------------------------------------------------


def test_the_daemon_starts_and_check_config_warns_with_a_deeply_nested_cache(tmp_path: Path, run_exporter: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_text("[" * 200_000)
    config = tmp_path / "config.yml"
    config.write_text("host: {provider: static, instance_type: p4d.24xlarge}\nmetadata: {providers: []}\n")
    args = ["--config.file", str(config), "--state.directory", str(state), "--no-collector.nvml"]
    args += ["--no-collector.neuron", "--collector.interval", "200ms"]

    check = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", *args],
        cwd=ROOT,
        env=exporter_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert "configuration OK" in check.stdout
    assert "price cache" in check.stderr and "nested too deeply" in check.stderr
    assert "Traceback" not in check.stderr

    exporter: ExporterProcess = run_exporter(args)
    metrics = exporter.metrics()
    assert 'accel_exporter_errors_total{collector="price",reason="cache_unreadable"} 1.0' in metrics
    assert exporter.log().count("nested too deeply") == 1
    assert "Traceback" not in exporter.log()
    assert exporter.stop() == 0
