"""Fuzzing every loader and parser that reads untrusted input, and the exposition of hostile label values.

Each loader must turn any input into either a valid result or its one documented error
(ConfigInvalid, WebConfigInvalid, the neuron parser's ParseError), never another exception.
Label values from processes and tags are round-tripped through the exposition; a handful of
nasty ones also go through `promtool check metrics`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from exporter.accounting.ledger import Ledger
from exporter.config import AttributionRule, AttributionSettings, Config, ConfigInvalid, load_config, parse_config
from exporter.config.model import AccountingSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.owner.labels import sanitize_label
from exporter.context.price.price_bounds import MAX_DOLLARS_PER_HOUR, MIN_DOLLARS_PER_HOUR, price_problem
from exporter.context.price.price_cache import FILE_NAME, CachedPrice, PriceCache
from exporter.exposition.render import RenderCache
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.sim.scenario import Scenario, load_scenario, parse_scenario

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")

# --- strategies ---------------------------------------------------------------------------------

CONFIG_KEYS = [
    # sections
    "accounting", "host", "pricing", "attribution", "metadata", "neuron", "kubernetes",
    # accounting
    "idle_threshold", "target_utilization", "max_processes_per_device", "export_processes",
    # host and metadata
    "provider", "instance_type", "instance_id", "region", "zone", "lifecycle", "tags", "providers", "timeout",
    "aws_endpoint", "gcp_endpoint", "azure_endpoint", "refresh_interval", "aws_instance_tags", "aws_describe_tags",
    # pricing
    "instance_types", "device_models", "aws", "enabled", "endpoint_url", "spot_refresh_interval", "split",
    # attribution
    "rules", "match", "team", "workload", "default_team", "default_workload", "tag_keys", "max_label_values",
    "max_label_length", "user", "command", "unit", "cgroup", "pod", "namespace", "tag:Team",
    # neuron and kubernetes
    "monitor_path", "period", "pod_resources_socket",
]  # fmt: skip
SCENARIO_KEYS = [
    "name", "description", "host", "driver_version", "nvml", "missing", "sample_period", "buffer_samples", "faults",
    "gpus", "index", "model", "memory_total", "utilization", "power", "idle", "max", "memory_baseline", "mig", "gi",
    "slices", "uuid", "constant", "burst", "busy", "period", "value", "offset", "schedule", "steps", "at", "repeat",
    "random", "mean", "spread", "step", "seed", "type", "call", "until", "every", "error", "xid", "processes", "pid",
    "device", "memory", "user", "command", "started", "start", "end", "cgroup", "lifetime", "neuron", "device_type",
    "devices", "cores_per_device", "memory_per_device", "runtimes", "tag", "cores", "listed_cores", "memory_per_core",
    "executions_per_second", "errors_per_second", "crash_after_lines", "garbage_every", "oversized_every",
    "oversized_bytes", "error_every",
]  # fmt: skip
WEB_KEYS = [
    "tls_server_config", "http_server_config", "basic_auth_users", "cert_file", "key_file", "client_auth_type",
    "client_ca_file", "min_version", "max_version", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
    "headers", "http2", "Strict-Transport-Security", "X-Frame-Options", "alice", "RequireAndVerifyClientCert",
    "TLS12", "TLS13",
]  # fmt: skip
NEURON_KEYS = [
    "neuron_runtime_data", "pid", "neuron_runtime_tag", "error", "report", "neuroncore_counters", "nc_counters",
    "period", "neuroncores_in_use", "0", "1", "7", "neuroncore_utilization", "flops", "execution_stats",
    "inference_stats", "execution_summary", "error_summary", "completed", "timed_out", "generic", "memory_used",
    "neuron_runtime_used_bytes", "neuroncore_memory_usage", "loaded_models", "neuron_hardware_info",
    "neuron_device_count", "neuroncore_per_device_count", "neuron_device_type", "neuron_device_memory_size",
    "logical_neuroncore_config", "instance_info", "instance_type", "instance_id", "instance_availability_zone",
    "instance_region", "system_data", "neuron_hw_counters", "neuron_devices", "mem_ecc_corrected", "memory_info",
]  # fmt: skip
TRICKY_STRINGS = [
    "5s", "1m", "250ms", "2h", "-1s", "0", "1e309", "nan", ".inf", "40GiB", "512 MiB", "-3", "on-demand", "spot",
    "aws", "gcp", "static", "even", "opencost", "/opt/aws/neuron/bin/neuron-monitor", "relative/path", "{user}",
    "{tag:Team}", "*", "[", "\x00", "\n", "é", "\U0001f600", "9" * 400, "p4d.24xlarge", "NVIDIA A100-SXM4-40GB",
    "0/1", "lost", "error", "xid", "init_error", "unsupported", "Unknown", "GpuIsLost", "nvmlDeviceGetSamples",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(TRICKY_STRINGS),
)


def documents(keys: list[str]) -> st.SearchStrategy[Any]:
    """YAML-like trees whose mapping keys are mostly the schema's own, so values reach deep checks."""
    key = st.one_of(st.sampled_from(keys), st.sampled_from(keys), st.text(max_size=6), st.integers(-2, 2))
    return st.recursive(
        SCALARS,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(key, children, max_size=5),
        max_leaves=30,
    )


def sections(keys: list[str], top: list[str]) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping of top-level section names to trees: most documents get past the top level."""
    return st.dictionaries(st.sampled_from(top), documents(keys), max_size=len(top))


def yaml_bytes(keys: list[str]) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, YAML dumps of schema-like trees, and such dumps with bytes spliced in."""
    dumped = documents(keys).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode())
    spliced = st.tuples(dumped, st.binary(max_size=8), st.integers(0, 400)).map(
        lambda t: t[0][: t[2]] + t[1] + t[0][t[2] :]
    )
    return st.one_of(st.binary(max_size=300), dumped, spliced)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="accel-fuzz-") as folder:
        yield Path(folder)


# --- the configuration file ---------------------------------------------------------------------


def check_config(config: Config) -> None:
    """What a loaded configuration promises, whatever the input was."""
    a = config.accounting
    assert 0.0 <= a.idle_threshold <= 1.0 and 0.01 <= a.target_utilization <= 1.0
    prices = config.pricing.instance_types + config.pricing.device_models
    assert all(MIN_DOLLARS_PER_HOUR <= p <= MAX_DOLLARS_PER_HOUR for _, p in prices)
    durations = (
        config.pricing.refresh_seconds,
        config.pricing.spot_refresh_seconds,
        config.pricing.aws_timeout_seconds,
        config.metadata.timeout_seconds,
        config.metadata.refresh_seconds,
        config.neuron.period_seconds,
        config.kubernetes.refresh_seconds,
    )
    assert all(math.isfinite(d) and d > 0 for d in durations)
    assert config.neuron.monitor_path.startswith("/")
    for rule in config.attribution.rules:
        assert rule.team and rule.match


@FUZZ
@given(st.one_of(documents(CONFIG_KEYS), sections(CONFIG_KEYS, CONFIG_KEYS[:7])))
@example({"accounting": {"idle_threshold": 10**400}})
@example({"pricing": {"instance_types": {"p4d.24xlarge": 10**400}, "refresh_interval": -(10**400)}})
@example({"accounting": {"idle_threshold": float("nan"), "target_utilization": float("inf")}})
@example({"attribution": {"rules": [{"match": {}, "team": ""}, None, [], {"match": {"user": None}}]}})
def test_parse_config_gives_a_config_or_config_invalid(document: Any) -> None:
    try:
        config = parse_config(document)
    except ConfigInvalid as exc:
        assert exc.errors and all(isinstance(e, str) and e for e in exc.errors)
        return
    check_config(config)


@FUZZ
@given(yaml_bytes(CONFIG_KEYS))
@example(b"accounting:\n  idle_threshold: " + b"9" * 5000 + b"\n")  # past Python's int-string limit
@example(b"a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\naccounting: *b\n")
@example(b"[" * 5000)
@example(b"\xff\xfe\x00x")
@example(b"accounting: !!python/object/apply:os.system [true]\n")
def test_load_config_gives_a_config_or_config_invalid(scratch: Path, data: bytes) -> None:
    path = scratch / "config.yaml"
    path.write_bytes(data)
    try:
        config = load_config(str(path))
    except ConfigInvalid as exc:
        assert str(path) in str(exc)
        return
    check_config(config)


def test_an_alias_bomb_is_refused_quickly(scratch: Path) -> None:
    # Nine levels of nine aliases: 387 million items if anything expanded them.
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = scratch / "bomb.yaml"
    for section in ("accounting", "attribution"):
        path.write_text("\n".join([*lines, f"{section}: *l8", "metadata: {providers: *l8}"]) + "\n")
        with pytest.raises(ConfigInvalid) as caught:
            load_config(str(path))
        assert len(str(caught.value)) < 4000


# --- the scenario loader ------------------------------------------------------------------------


def check_scenario(scenario: Scenario) -> None:
    assert 0.01 <= scenario.sample_period <= 10.0 and scenario.buffer_samples >= 1
    assert len({g.index for g in scenario.gpus}) == len(scenario.gpus)
    for gpu in scenario.gpus:
        assert gpu.memory_total >= 0
        for t in (0.0, 1.5, 3600.0):
            assert 0.0 <= gpu.utilization.level(t) <= 1.0
        assert 0.0 <= gpu.utilization.busy(0.0, 10.0) <= 10.0 + 1e-9


@FUZZ
@given(
    st.one_of(
        documents(SCENARIO_KEYS), sections(SCENARIO_KEYS, ["name", "host", "nvml", "gpus", "processes", "neuron"])
    )
)
@example({"gpus": [{"index": 0, "memory_total": "9" * 400 + "GiB"}]})
@example({"gpus": [{"index": 0, "utilization": {"burst": {"busy": "1s", "period": "1e400s"}}}]})
@example({"gpus": [{"utilization": {"schedule": {"steps": [{"at": "1s", "value": 0.5}], "repeat": 10**400}}}]})
@example({"processes": [{"pid": 1, "every": "0.000001s", "lifetime": "1h"}]})
def test_parse_scenario_gives_a_scenario_or_config_invalid(document: Any) -> None:
    try:
        scenario = parse_scenario(document, "fuzz")
    except ConfigInvalid as exc:
        assert exc.errors
        return
    check_scenario(scenario)


@FUZZ
@given(yaml_bytes(SCENARIO_KEYS))
@example(b"gpus: [{index: " + b"7" * 5000 + b"}]\n")
def test_load_scenario_gives_a_scenario_or_config_invalid(scratch: Path, data: bytes) -> None:
    path = scratch / "scenario.yaml"
    path.write_bytes(data)
    try:
        scenario = load_scenario(str(path))
    except ConfigInvalid:
        return
    check_scenario(scenario)


# --- the web config -----------------------------------------------------------------------------


@FUZZ
@given(
    st.one_of(
        yaml_bytes(WEB_KEYS),
        sections(WEB_KEYS, WEB_KEYS[:3]).map(lambda d: yaml.safe_dump(d, allow_unicode=True).encode()),
    )
)
@example(b"basic_auth_users: {alice: " + b"1" * 5000 + b"}\n")
@example(b"\xff\xfe\x00x")
@example(b"[" * 5000)
@example(b"tls_server_config: {cert_file: /dev/null, key_file: /dev/null}\n")
@example(b"http_server_config: {headers: {X-Frame-Options: [deny]}}\n")
def test_load_web_config_gives_a_config_or_web_config_invalid(scratch: Path, data: bytes) -> None:
    from exporter.web.webconfig import WebConfig, WebConfigInvalid, load_web_config

    path = scratch / "web.yml"
    path.write_bytes(data)
    try:
        config = load_web_config(path)
    except WebConfigInvalid as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(config, WebConfig)


# --- neuron-monitor lines -----------------------------------------------------------------------


def json_lines() -> st.SearchStrategy[bytes]:
    tree = documents(NEURON_KEYS).filter(lambda d: _jsonable(d))
    as_json = tree.map(lambda d: json.dumps(d, allow_nan=True).encode())
    return st.one_of(
        st.binary(max_size=300), as_json, st.tuples(as_json, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    )


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


@FUZZ
@given(json_lines())
@example(b'{"neuron_runtime_data": [{"pid": ' + b"9" * 400 + b', "report": {}}]}')
@example(b'{"neuron_hardware_info": {"neuron_device_count": ' + b"9" * 400 + b"}}")
@example(b'{"neuron_runtime_data": [{"pid": 1, "report": {"neuroncore_counters": {"period": 1e999}}}]}')
@example(b'{"neuron_runtime_data": [{"pid": 1, "neuron_runtime_tag": "\\ud800"}]}')
@example(b"[" * 100_000)
@example(b'{"a": ' + b"1" * 5000 + b"}")
def test_neuron_line_parser_gives_a_record_or_parse_error(line: bytes) -> None:
    from exporter.sources.neuron_parse import MonitorRecord, ParseError, parse_line

    for form in (line, line.decode("utf-8", "replace")):
        try:
            record = parse_line(form)
        except ParseError:
            continue
        assert isinstance(record, MonitorRecord)
        period = record.period()
        assert period is None or (math.isfinite(period) and period >= 0)


# --- the price cache in the state directory -------------------------------------------------------

CACHE_ENTRY_KEYS = ["dollars_per_hour", "source", "lifecycle", "fetched_at"]
CACHE_KEYS = ["version", "entries", *CACHE_ENTRY_KEYS, "aws|p4d.24xlarge|us-east-1||on-demand"]
PRICE_REASONS = {"cache_unreadable", "cache_bad_entry", "price_out_of_bounds"}


def cache_files() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, JSON trees of the cache's keys, and version-1 files whose entries hold any scalars."""
    entry = st.dictionaries(st.sampled_from(CACHE_ENTRY_KEYS), SCALARS, min_size=3)
    versioned = st.dictionaries(st.text(max_size=8), st.one_of(entry, SCALARS), max_size=4).map(
        lambda entries: {"version": 1, "entries": entries}
    )
    trees = st.one_of(documents(CACHE_KEYS), versioned).filter(_jsonable)
    as_json = trees.map(lambda d: json.dumps(d, allow_nan=True).encode())
    return st.one_of(
        st.binary(max_size=300), as_json, st.tuples(as_json, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    )


@FUZZ
@given(cache_files())
@example(b"[" * 100_000)
@example(
    b'{"version": 1, "entries": {"k": {"dollars_per_hour": Infinity, "source": "s", "lifecycle": "l", "fetched_at": 1}}}'
)
@example(
    b'{"version": 1, "entries": {"k": {"dollars_per_hour": 1e-300, "source": "s", "lifecycle": "l", "fetched_at": 1}}}'
)
@example(
    b'{"version": 1, "entries": {"k": {"dollars_per_hour": 1, "source": "s", "lifecycle": "l", "fetched_at": 1'
    + b"0" * 5000
    + b"}}}"
)
def test_the_price_cache_loads_anything_and_keeps_only_bounded_prices(scratch: Path, data: bytes) -> None:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    (directory / FILE_NAME).write_bytes(data)
    cache = PriceCache(str(directory))  # never raises, whatever the file holds
    assert set(cache.load_problems) <= PRICE_REASONS
    # Rewriting the file shows every entry that survived the load, as strict JSON.
    assert cache.put("probe", CachedPrice(1.0, "aws-pricing-api", "on-demand", 0.0))
    written = json.loads((directory / FILE_NAME).read_text(), parse_constant=_refuse_constant)
    for entry in written["entries"].values():
        assert price_problem(entry["dollars_per_hour"]) is None and math.isfinite(entry["fetched_at"])


def _refuse_constant(name: str) -> None:
    raise AssertionError(f"the price cache wrote the non-JSON constant {name}")


# --- label values -------------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=600), st.integers(min_value=2, max_value=300))
@example("a\nb\x00c\u200dd  e\t", 64)
@example("\ud800\udfff lone surrogates", 8)
@example("x" * 10_000_000, 64)
@example("e\u0301" * 40, 16)  # decomposed accents: NFC shrinks them
def test_sanitize_label_bounds_and_cleans_any_text(value: str, max_length: int) -> None:
    clean = sanitize_label(value, max_length)
    assert len(clean) <= max_length
    assert clean == clean.strip() and "  " not in clean
    assert not any(unicodedata.category(ch).startswith("C") for ch in clean)
    clean.encode("utf-8")  # raises on a lone surrogate
    assert sanitize_label(clean, max_length) == clean  # a clean value stays as it is


@pytest.mark.parametrize("max_length", [-1, 0, 1])
def test_sanitize_label_refuses_a_useless_bound(max_length: int) -> None:
    with pytest.raises(ValueError, match="max_length"):
        sanitize_label("team", max_length)


# Any text, lone surrogates included: pwd decodes a Latin-1 user name to them, JSON escapes too.
LABEL_TEXT = st.text(max_size=200)
NASTY = [
    'quote " inside',
    "back\\slash \\n not a newline",
    "new\nline",
    "carriage\rreturn",
    "tab\tand\x00nul",
    '}{,=" label syntax',
    "ünïcödé ✓ 中文 \U0001f600",
    "\u200b\u200dzero width\ufeff",
    "# HELP fake_metric not a comment",
    "x" * 500,
    "j\udce9r\udcf4me",  # b"j\xe9r\xf4me" in /etc/passwd, as pwd hands it over
    "",
]


def exposition_of(processes: list[tuple[str, str]]) -> str:
    """Render a snapshot whose processes have these (user, command) pairs; teams come from the users."""
    settings = AttributionSettings(
        rules=(AttributionRule(match=(("user", "*"),), team="{user}", workload="{command}"),)
    )
    identity = HostIdentity(provider="aws", instance_type="p4d.24xlarge", tags=(("Team", processes[0][0]),))
    context = HostContext(identity, PriceQuote(32.77, "config"), RuleAttributor(settings, identity.tags))
    ledger = Ledger(AccountingSettings(), max_label_values=1000)
    device = DeviceIdentity("nvidia0", "GPU-fuzz", "nvidia", "NVIDIA A100", "gpu")
    readings = tuple(
        ProcessReading(1000 + i, 2**30 * (i + 1), user, command) for i, (user, command) in enumerate(processes)
    )
    for now in (0.0, 15.0):
        reading = DeviceReading(device, True, 3.0, 15.0, 0.2, 2**30, 2**35, processes=readings)
        ledger.ingest(SourceReport("nvml", (reading,), True, 0.01, 1.8e9 + now), context, now)
    cache = RenderCache(process_metrics=False)
    cache.publish(ledger.snapshot(15.0))
    text = cache.text()
    openmetrics = cache.openmetrics()
    assert text is not None and openmetrics is not None
    # The OpenMetrics rendering must parse too (strict parser: it fails on any escaping error).
    list(openmetrics_families(openmetrics.body.decode()))
    return text.body.decode()


def utf8(text: str) -> str:
    """What the exposition makes of a label value: lone surrogates become '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")


def round_trip(processes: list[tuple[str, str]]) -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition_of(processes))}
    info = {s.labels["pid"]: s.labels for s in families["accel_process_info"].samples}
    assert len(info) == len(processes)
    for i, (user, command) in enumerate(processes):
        labels = info[str(1000 + i)]
        # Process text is untrusted: no control characters, bounded (64 / 128), then valid UTF-8.
        assert labels["user"] == utf8(sanitize_label(user, 64))
        assert labels["command"] == utf8(sanitize_label(command, 128))
        assert labels["team"] == (
            sanitize_label(user) or (processes[0][0] and sanitize_label(processes[0][0])) or "unassigned"
        )
    # The cost went to the team of the biggest process; every counter kept its value.
    cost = {s.labels["team"]: s.value for s in families["accel_cost_dollars"].samples}
    assert sum(cost.values()) == pytest.approx(32.77 / 3600 * 15)


@FUZZ
@given(st.lists(st.tuples(LABEL_TEXT, LABEL_TEXT), min_size=1, max_size=4))
def test_any_process_text_round_trips_through_the_exposition(processes: list[tuple[str, str]]) -> None:
    round_trip(processes)


def test_nasty_label_values_round_trip() -> None:
    round_trip([(user, command) for user, command in zip(NASTY, reversed(NASTY), strict=True)])


@needs_promtool
@pytest.mark.parametrize("value", NASTY)
def test_promtool_accepts_nasty_label_values(value: str) -> None:
    text = exposition_of([(value or "nobody", value), ("svc", "python serve.py")])
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
