"""End to end: simulated exporters -> real Prometheus (shipped rules) -> real Alertmanager -> webhook.

Started as real subprocesses on 127.0.0.1 only:
- one `python -m exporter --demo <scenario>` per built-in scenario used here (p4d-idle-fleet,
  g6-inference, inf2-inference and h100-gpm, required; a100-mig when `--demo list` offers it),
  polling every second, so NVIDIA, MIG, GPM and Neuron series all go through the rules and
  dashboards;
- one more p4d-idle-fleet whose config names an instance type without a price, so that host has
  price_source="none" and no money series (with idle GPUs no process holds, so nothing names
  their team);
- one more p4d-idle-fleet priced as owned hardware (`pricing.owned`, price_source="owned") with a
  fixed grid intensity, so owned and cloud hosts meet on the fleet overview;
- /usr/bin/prometheus scraping them every second as job "accel", loading the shipped recording and
  alert rules plus a *derived* copy of the alert rules, made here by rewriting the shipped file
  (short `for`, low thresholds; never a hand-written copy), evaluating every second;
- /usr/bin/prometheus-alertmanager with a derived copy of alerts/alertmanager.example.yml whose
  receivers post to a webhook server inside this test.

Checks: every rule loads and evaluates cleanly; every recording rule has values; every query of
every dashboard panel and annotation (and every variable) returns data; every query outside the
money panels, and the team variable, return data for the unpriced host; the fleet overview splits
spend and waste by price source with the owned host beside the cloud ones, and carbon over
energy is each host's grid intensity x PUE; the GPM panels show the
h100-gpm inference GPU busy with almost no SM activity, and the derived
AcceleratorBusyWithoutSmActivity names that GPU alone and reaches only the "null" receiver; a
derived alert reaches the webhook through the example routing tree, info alerts do not; killing an
exporter raises AcceleratorExporterDown to the platform receiver.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from conftest import ROOT, grafana_generator, pick_free_port

from exporter.sim.host import DEMO_CONFIG

RULES = ROOT / "alerts" / "accel-cost.rules.yml"
ALERT_RULES = ROOT / "alerts" / "accel-cost.alerts.yml"
AM_CONFIG = ROOT / "alerts" / "alertmanager.example.yml"
GRAFANA = ROOT / "grafana"
PYTHON = ROOT / ".venv" / "bin" / "python"
PROMETHEUS = shutil.which("prometheus") or ""
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or ""
REQUIRED_SCENARIOS = ("p4d-idle-fleet", "g6-inference", "inf2-inference", "h100-gpm")
WANTED_SCENARIOS = (*REQUIRED_SCENARIOS, "a100-mig")
JOB = "accel"
# A second p4d-idle-fleet host whose instance type no price source knows: price_source="none".
UNPRICED = "p4d-idle-fleet-unpriced"
UNPRICED_TYPE = "p4d.unpriced"
# A third p4d-idle-fleet host priced as owned hardware: price_source="owned".
OWNED = "p4d-idle-fleet-owned"
OWNED_PRICING = {
    "purchase_price": 240000,
    "lifetime_years": 4,
    "overhead_per_device_hour": 0.15,
    "electricity_per_kwh": 0.12,
    "pue": 1.4,
}

pytestmark = pytest.mark.skipif(
    not (PROMETHEUS and ALERTMANAGER),
    reason="needs prometheus and prometheus-alertmanager (apt-get install prometheus prometheus-alertmanager)",
)

# Per alert: (text in the shipped expr, its replacement). Each must match exactly once, so a
# change to the shipped rules fails here loudly instead of silently testing something else.
FAST_THRESHOLDS: dict[str, list[tuple[str, str]]] = {
    "AcceleratorIdle": [("accel_idle_seconds >= 3600", "accel_idle_seconds >= 2")],
    "AcceleratorHostIdle": [(") >= 7200", ") >= 2")],
    "AcceleratorAbandoned": [("accel_idle_seconds >= 14400", "accel_idle_seconds >= 2")],
    "AcceleratorLongRunningLowUtilization": [
        ("> 86400", "> 60"),
        ("device:accel_state_seconds:increase1d >= 77760", "device:accel_state_seconds:increase1d >= 0"),
    ],
    "AcceleratorTeamIdleSpendHigh": [
        ("team:accel_idle_cost_dollars_per_hour:rate1h > 20", "team:accel_idle_cost_dollars_per_hour:rate5m > 0")
    ],
    "AcceleratorFleetUnderutilized": [
        ("round(job:accel_utilization:ratio_rate1h, 0.0001) < 0.4", "job:accel_utilization:ratio_rate5m < 1.01")
    ],
}

# Alerts whose derived copy must resolve at once: with `for: 0s`, the first seconds of an exporter
# (a GPM interval not yet read while busy time is) can match briefly, and keep_firing_for would hold
# that for 15 minutes; the tests wait for these alerts to settle instead.
SETTLING_ALERTS = {"AcceleratorBusyWithoutSmActivity"}

T = TypeVar("T")


def derive_fast_alert_rules(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped alert rules with `for: 0s`, FAST_THRESHOLDS applied and an `e2e` label (and no
    keep_firing_for on SETTLING_ALERTS)."""
    groups = []
    for group in shipped["groups"]:
        rules = []
        for rule in group["rules"]:
            rule = dict(rule)
            name = rule["alert"]
            for old, new in FAST_THRESHOLDS.get(name, []):
                count = rule["expr"].count(old)
                assert count == 1, f"{name}: expected {old!r} once in the shipped expr, found it {count} times"
                rule["expr"] = rule["expr"].replace(old, new)
            rule["for"] = "0s"
            if name in SETTLING_ALERTS:
                rule.pop("keep_firing_for", None)
            rule["labels"] = {**rule.get("labels", {}), "e2e": "derived"}
            rules.append(rule)
        groups.append({"name": group["name"] + "-e2e", "rules": rules})
    return {"groups": groups}


def derive_alertmanager_config(example: dict[str, Any], webhook_url: str) -> dict[str, Any]:
    """The example config with every notifying receiver posting to `webhook_url`, and fast timers."""
    config: dict[str, Any] = json.loads(json.dumps(example))
    for receiver in config["receivers"]:
        if "webhook_configs" in receiver:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": False}]
    route = config["route"]
    route.update(group_wait="1s", group_interval="1s", repeat_interval="1m")

    def fast(routes: list[dict[str, Any]]) -> None:
        for child in routes:
            for key in ("group_wait", "group_interval"):
                child.pop(key, None)
            if "repeat_interval" in child:
                child["repeat_interval"] = "1m"
            fast(child.get("routes", []))

    fast(route.get("routes", []))
    return config


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, procs: list[Proc] | None = None) -> T:
    """Poll `probe` until it returns something other than None/False; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        for proc in procs or []:
            proc.check_alive()
        with contextlib.suppress(OSError):
            last = probe()
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Proc:
    """A child process with its log file; killed at the end."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def start(name: str, args: list[str], log_dir: Path, cwd: Path = ROOT) -> Proc:
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(args, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    handle.close()
    return Proc(name, popen, log)


@dataclass
class Webhook:
    """An HTTP server collecting Alertmanager webhook payloads."""

    payloads: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self) -> list[tuple[str, dict[str, str]]]:
        """(receiver, labels) of every alert received so far."""
        with self.lock:
            return [(p["receiver"], a["labels"]) for p in self.payloads for a in p["alerts"]]

    def serve(self) -> tuple[http.server.ThreadingHTTPServer, str]:
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with hook.lock:
                    hook.payloads.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server, f"http://127.0.0.1:{server.server_address[1]}/hook"


@dataclass
class Stack:
    prometheus: str
    alertmanager: str
    exporters: dict[str, tuple[str, Proc]]  # scenario -> (address, process)
    webhook: Webhook
    procs: list[Proc]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query, evaluated now or at Unix time `at`."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", f"query failed: {expr}\n{data.get('error')}"
        result = data["data"]["result"]
        return result if isinstance(result, list) else [result]


def serves_metrics(address: str) -> Callable[[], bool]:
    def probe() -> bool:
        return b"accel_device_info" in http_get(f"http://{address}/metrics")[1]

    return probe


def available_scenarios() -> list[str]:
    out = subprocess.run(
        [str(PYTHON), "-m", "exporter", "--demo", "list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return [s for s in WANTED_SCENARIOS if s in names]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    scenarios = available_scenarios()
    assert set(REQUIRED_SCENARIOS) <= set(scenarios), f"built-in scenarios missing: {scenarios}"
    procs: list[Proc] = []
    server: http.server.ThreadingHTTPServer | None = None
    try:
        exporters: dict[str, tuple[str, Proc]] = {}
        env_python = str(PYTHON if PYTHON.exists() else sys.executable)
        unpriced_config = yaml.safe_load(DEMO_CONFIG.read_text())
        unpriced_config["host"] = {"instance_type": UNPRICED_TYPE}
        (tmp / "unpriced.yml").write_text(yaml.safe_dump(unpriced_config))
        owned_config = yaml.safe_load(DEMO_CONFIG.read_text())
        owned_config["pricing"] = {**owned_config.get("pricing", {}), "owned": OWNED_PRICING}
        owned_config["carbon"] = {"grid_intensity": 400}
        (tmp / "owned.yml").write_text(yaml.safe_dump(owned_config))
        runs = [(scenario, scenario, []) for scenario in scenarios]
        runs.append((UNPRICED, "p4d-idle-fleet", [f"--config.file={tmp / 'unpriced.yml'}"]))
        runs.append((OWNED, "p4d-idle-fleet", [f"--config.file={tmp / 'owned.yml'}"]))
        for name, scenario, extra in runs:
            address = f"127.0.0.1:{pick_free_port()}"
            args = [
                env_python,
                "-m",
                "exporter",
                "--demo",
                scenario,
                "--web.listen-address",
                address,
                "--collector.interval",
                "1s",
                *extra,
            ]
            proc = start(f"exporter-{name}", args, tmp)
            procs.append(proc)
            exporters[name] = (address, proc)

        webhook = Webhook()
        server, hook_url = webhook.serve()
        am_port = pick_free_port()
        am_cfg = tmp / "alertmanager.yml"
        am_cfg.write_text(yaml.safe_dump(derive_alertmanager_config(yaml.safe_load(AM_CONFIG.read_text()), hook_url)))
        (tmp / "am-data").mkdir()
        procs.append(
            start(
                "alertmanager",
                [
                    ALERTMANAGER,
                    f"--config.file={am_cfg}",
                    f"--storage.path={tmp / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                tmp,
            )
        )

        derived = tmp / "accel-cost.alerts.e2e.yml"
        derived.write_text(
            yaml.safe_dump(derive_fast_alert_rules(yaml.safe_load(ALERT_RULES.read_text())), sort_keys=False)
        )
        prom_port = pick_free_port()
        prom_cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES), str(ALERT_RULES), str(derived)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [a for a, _ in exporters.values()]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        procs.append(
            start(
                "prometheus",
                [
                    PROMETHEUS,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--web.enable-lifecycle",
                ],
                tmp,
                cwd=tmp,
            )
        )
        prom, am = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
        for address, proc in exporters.values():
            wait_for(f"{proc.name} /metrics", serves_metrics(address), 30, procs)
        wait_for("alertmanager ready", lambda: http_get(f"{am}/-/ready")[0] == 200, 30, procs)
        wait_for("prometheus ready", lambda: http_get(f"{prom}/-/ready")[0] == 200, 30, procs)
        st = Stack(prom, am, exporters, webhook, procs)
        wait_for(
            "every target up",
            lambda: len([r for r in st.query(f'up{{job="{JOB}"}} == 1')]) == len(exporters),
            30,
            procs,
        )
        yield st
    finally:
        for proc in reversed(procs):
            proc.stop()
        if server is not None:
            server.shutdown()
            server.server_close()


# --- substitution of Grafana variables ------------------------------------------------------------

SUBSTITUTIONS = {
    "$__rate_interval": "5s",
    "$__range_s": "60",
    "$__range": "1m",
    "${datasource}": "prometheus",
    "$job": JOB,
    # The "All" values of the dashboards' variables (team's is ".*": it keeps devices nothing owns).
    "$instance": ".+",
    "$device": ".+",
    "$team": ".*",
}


def substitute(expr: str, **values: str) -> str:
    """`expr` with the variables replaced: SUBSTITUTIONS, or `values` (e.g. instance=...) for some."""
    table = {**SUBSTITUTIONS, **{f"${name}": value for name, value in values.items()}}
    # Longest names first, so $__range_s is not read as $__range followed by "_s".
    for var in sorted(table, key=len, reverse=True):
        expr = expr.replace(var, table[var])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title + refId or annotation name, expr) of every query of every dashboard."""
    out = []
    for path in sorted(GRAFANA.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                out.append((path.name, f"{panel['title']} [{target['refId']}]", target["expr"]))
        for annotation in dashboard["annotations"]["list"]:
            out.append((path.name, f"annotation {annotation['name']}", annotation["expr"]))
    return out


def has_numbers(stack: Stack, expr: str) -> bool:
    """At least one sample, and no NaN/Inf from a division by zero."""
    values = [float(s["value"][1]) for s in stack.query(expr)]
    return bool(values) and all(math.isfinite(v) for v in values)


def without_data(stack: Stack, queries: list[tuple[str, str, str]], timeout: float = 40) -> list[str]:
    """The queries (already substituted) still without data once `timeout` has passed; [] as soon as all have."""
    deadline = time.monotonic() + timeout
    while True:
        bad = [f"{d}: {title}: {expr}" for d, title, expr in queries if not has_numbers(stack, expr)]
        if not bad or time.monotonic() >= deadline:
            return bad
        time.sleep(1)


# --- tests (module-scoped stack; the exporter-down test goes last) ---------------------------------


def test_every_rule_loads_and_evaluates(stack: Stack) -> None:
    shipped = {
        r.get("record") or r.get("alert")
        for f in (RULES, ALERT_RULES)
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    }

    def rules_ok() -> list[dict[str, Any]] | None:
        data = json.loads(http_get(f"{stack.prometheus}/api/v1/rules")[1])["data"]["groups"]
        rules = [r for g in data for r in g["rules"]]
        if any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
            return None  # not evaluated yet
        return rules

    rules = wait_for("rules evaluated", rules_ok, 30, stack.procs)
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert bad == []
    assert shipped <= {r["name"] for r in rules}
    groups = {g["name"] for g in json.loads(http_get(f"{stack.prometheus}/api/v1/rules")[1])["data"]["groups"]}
    assert {"accel-cost.rules", "accel-cost", "accel-cost-e2e"} <= groups


def test_prometheus_accepts_every_sample(stack: Stack) -> None:
    """No scrape of any scenario loses samples (duplicate series, out-of-order, bad timestamps)."""
    text = http_get(f"{stack.prometheus}/metrics")[1].decode()
    counters = (
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
        "prometheus_target_scrapes_exceeded_sample_limit_total",
    )
    values = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+) (\S+)$", text, re.M) if m.group(1) in counters
    }
    assert set(values) == set(counters)
    assert {k: v for k, v in values.items() if v} == {}


def test_recording_rules_produce_values(stack: Stack) -> None:
    names = [r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]

    def empty() -> list[str]:
        return [n for n in names if not stack.query(n)]

    deadline = time.monotonic() + 40
    missing = empty()
    while missing and time.monotonic() < deadline:
        time.sleep(1)
        missing = empty()
    assert missing == []

    # Shape checks on real data: the fleet has the devices of every scenario, utilization is a ratio.
    # A host's devices can appear a scrape after the rule last ran (neuron-monitor starts slowly): wait.
    def devices_counted() -> bool:
        devices = float(stack.query(f'job:accel_devices:count{{job="{JOB}"}}')[0]["value"][1])
        return devices == len(stack.query(f'accel_busy_seconds_total{{job="{JOB}"}}'))

    wait_for("job:accel_devices:count to count every device", devices_counted, 30, stack.procs)
    util = float(stack.query(f'job:accel_utilization:ratio_rate5m{{job="{JOB}"}}')[0]["value"][1])
    assert 0.0 < util < 1.0
    # Exactly one owner series per device, each naming a team where the device has cost series: all
    # but the unpriced host's devices and a fully sliced MIG parent (a100-mig's nvidia5: its instances
    # carry its price, and it has no state). A host's first cost series can lag its first scrape
    # (neuron-monitor starts slowly): wait for it.
    unpriced = stack.exporters[UNPRICED][0]

    def owners_named() -> list[dict[str, Any]] | None:
        owners = stack.query("device_team:accel_owner:info")
        with_state = {(s["metric"]["instance"], s["metric"]["device"]) for s in stack.query("accel_state == 1")}
        unnamed = [
            o
            for o in owners
            if not o["metric"].get("team")
            and o["metric"]["instance"] != unpriced
            and (o["metric"]["instance"], o["metric"]["device"]) in with_state
        ]
        return None if unnamed else owners

    owners = wait_for("every priced device's owner team", owners_named, 30, stack.procs)
    keys = [(o["metric"]["instance"], o["metric"]["device"]) for o in owners]
    assert sorted(keys) == sorted(
        {(d["metric"]["instance"], d["metric"]["device"]) for d in stack.query("accel_device_up")}
    )
    costed = {(c["metric"]["instance"], c["metric"]["device"]) for c in stack.query("accel_cost_dollars_total")}
    assert len(costed) < len(keys)  # the fully sliced parent and the unpriced host are there, without cost


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = dashboard_queries()
    assert len(queries) > 40
    bad = without_data(stack, [(d, title, substitute(expr)) for d, title, expr in queries])
    assert bad == [], "panels without data:\n" + "\n".join(bad)


def test_unpriced_host_has_no_money(stack: Stack) -> None:
    """The premise of the next test: the extra host is up, unpriced, and exports no cost series."""
    address = stack.exporters[UNPRICED][0]  # a regex matching itself: dots match dots
    wait_for(
        "the unpriced host's instance info",
        lambda: stack.query(f'accel_instance_info{{instance=~"{address}",price_source="none"}}'),
        30,
        stack.procs,
    )
    assert stack.query(f'accel_device_up{{instance=~"{address}"}}')
    assert stack.query(f'{{__name__=~"accel_(cost|idle_cost|waste)_dollars_total",instance=~"{address}"}}') == []


@pytest.mark.parametrize("team", ["", "ml-research"], ids=["all-teams", "one-team"])
def test_unpriced_host_stays_on_the_dashboards(stack: Stack, team: str) -> None:
    """Every query outside the money panels returns data for a host with price_source="none".

    With every team selected, and with one team (alice's, whose abandoned job holds GPU 2 of the
    unpriced p4d) for the device-level queries, which must find the team without a cost series.
    """
    gen = grafana_generator()
    address = stack.exporters[UNPRICED][0]  # a regex matching itself: dots match dots
    chosen = {"instance": address, **({"team": team} if team else {})}
    queries = [
        (name, "price-free query", substitute(expr, **chosen))
        for name in sorted(p.name for p in GRAFANA.glob("*.json"))
        for expr in gen.price_free_queries(name)
        if not team or gen.TEAM_JOIN in expr or "accel_process_info" in expr
    ]
    assert len(queries) > (10 if team else 25)
    bad = without_data(stack, queries)
    assert bad == [], "queries without data for the unpriced host:\n" + "\n".join(bad)


def panel_targets(name: str, title: str) -> list[str]:
    """The query expressions of the panel titled `title` on dashboard `name`."""
    panel = next(p for p in all_panels(json.loads((GRAFANA / name).read_text())) if p["title"] == title)
    return [t["expr"] for t in panel["targets"]]


def test_owned_and_cloud_hosts_together(stack: Stack) -> None:
    """The fleet overview splits spend and waste by price source and lists every host with its own;
    the team dashboard shows carbon per team from the owned host (fixed intensity) and the cloud ones
    (the built-in region table), priced or not."""
    owned = stack.exporters[OWNED][0]
    spend, waste = panel_targets("fleet-overview.json", "Spend and waste by price source ($/h)")

    def sources(expr: str) -> Callable[[], set[str] | None]:
        def found() -> set[str] | None:
            seen = {r["metric"].get("price_source", "") for r in stack.query(substitute(expr))}
            return seen if {"owned", "builtin"} <= seen else None

        return found

    assert "none" not in wait_for("owned and cloud spend", sources(spend), 40, stack.procs)
    wait_for("owned and cloud waste", sources(waste), 40, stack.procs)

    hosts = panel_targets("fleet-overview.json", "Hosts: price source, spend and carbon now")
    rows = {r["metric"]["instance"]: r["metric"]["price_source"] for r in stack.query(substitute(hosts[0]))}
    assert rows[owned] == "owned" and rows[stack.exporters[UNPRICED][0]] == "none"
    assert rows[stack.exporters["p4d-idle-fleet"][0]] == "builtin"
    assert len(rows) == len(stack.exporters)

    def grams_per_kwh() -> dict[str, float] | None:
        """Per host, carbon over energy (both from the same scrapes) in g per kWh."""
        carbon = {r["metric"]["instance"]: float(r["value"][1]) for r in stack.query(substitute(hosts[3]))}
        ratio = stack.query(
            "sum by (instance) (accel_carbon_grams_total) / sum by (instance) (accel_energy_joules_total)"
        )
        found = {r["metric"]["instance"]: float(r["value"][1]) * 3.6e6 for r in ratio}
        wanted = (owned, stack.exporters[UNPRICED][0])
        return found if all(h in carbon and math.isfinite(found.get(h, math.nan)) for h in wanted) else None

    ratios = wait_for("carbon of the owned and the unpriced host", grams_per_kwh, 60, stack.procs)
    assert ratios[owned] == pytest.approx(400 * 1.4, rel=1e-9)  # carbon.grid_intensity x the owned PUE
    assert ratios[stack.exporters[UNPRICED][0]] == pytest.approx(379.069, rel=1e-9)  # us-east-1, built-in table
    (by_team,) = panel_targets("team-cost.json", "Carbon by team (kg CO2e/h)")
    assert {r["metric"]["team"] for r in stack.query(substitute(by_team))} >= {"ml-research"}


def test_rightsizing_on_the_idle_p4d(stack: Stack) -> None:
    """The p4d scenario (8 GPUs, about 22 % busy) needs at most 4 GPUs at 70 %; the rest is the saving."""
    panel = next(
        p
        for p in all_panels(json.loads((GRAFANA / "fleet-overview.json").read_text()))
        if p["title"].startswith("What rightsizing would save")
    )
    address = stack.exporters["p4d-idle-fleet"][0]

    def columns() -> list[float] | None:
        at = time.time()  # one evaluation time for every column: the p95 window slides
        found = [stack.query(substitute(t["expr"], instance=address), at) for t in panel["targets"]]
        found.append(stack.query(f'accel_instance_price_dollars_per_hour{{instance="{address}"}}', at))
        values = [float(r[0]["value"][1]) for r in found] if all(found) else []
        return values if values and values[1] > 0 else None  # p95 0: under a minute of busy history yet

    held, p95, needed, saving, price = wait_for("the rightsizing columns", columns, 40, stack.procs)
    assert held == 8 and p95 < 2.8 and needed == math.ceil(p95 / 0.7) <= 4, (held, p95, needed)
    assert saving == pytest.approx((held - needed) * price / held * 720)


def test_every_dashboard_variable_has_values(stack: Stack) -> None:
    for path in sorted(GRAFANA.glob("*.json")):
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
            assert m, var["definition"]
            params = urllib.parse.urlencode({"match[]": substitute(m.group(1))})
            body = json.loads(http_get(f"{stack.prometheus}/api/v1/label/{m.group(2)}/values?{params}")[1])
            assert body["data"], f"{path.name}: variable {var['name']} has no values"
            # The unpriced host has no cost series; its teams must still be offered.
            unpriced = stack.exporters[UNPRICED][0]  # a regex matching itself: dots match dots
            params = urllib.parse.urlencode({"match[]": substitute(m.group(1), instance=unpriced)})
            body = json.loads(http_get(f"{stack.prometheus}/api/v1/label/{m.group(2)}/values?{params}")[1])
            assert body["data"], f"{path.name}: variable {var['name']} has no values for the unpriced host"


def test_derived_alert_reaches_webhook_through_routing(stack: Stack) -> None:
    p4d = stack.exporters["p4d-idle-fleet"][0]

    def idle_delivered() -> list[tuple[str, dict[str, str]]]:
        return [
            (r, labels)
            for r, labels in stack.webhook.alerts()
            if labels.get("alertname") == "AcceleratorIdle" and labels.get("instance") == p4d
        ]

    delivered = wait_for("AcceleratorIdle at the webhook", idle_delivered, 45, stack.procs)
    # GPUs 0 and 1 of the p4d scenario have no process; their owner comes from the instance's Team
    # tag (ml-platform), which has no route of its own, so the root receiver (finops) gets them.
    assert {labels["device"] for _, labels in delivered} <= {"nvidia0", "nvidia1"}
    assert {r for r, _ in delivered} == {"finops"}
    assert [
        labels for _, labels in delivered if labels.get("team") != "ml-platform" or labels["e2e"] != "derived"
    ] == []

    wait_for(
        "AcceleratorAbandoned at the webhook",
        lambda: [1 for _, labels in stack.webhook.alerts() if labels.get("alertname") == "AcceleratorAbandoned"],
        30,
        stack.procs,
    )

    # Info alerts reach Alertmanager but notify nobody (the "null" receiver).
    def fleet_alert_in_am() -> bool:
        alerts = json.loads(http_get(f"{stack.alertmanager}/api/v2/alerts")[1])
        return any(a["labels"].get("alertname") == "AcceleratorFleetUnderutilized" for a in alerts)

    wait_for("AcceleratorFleetUnderutilized in Alertmanager", fleet_alert_in_am, 30, stack.procs)
    time.sleep(3)  # more than group_wait: had it been routed to a webhook, it would be here now
    assert not [1 for _, labels in stack.webhook.alerts() if labels.get("severity") == "info"]


def test_gpm_panels_show_the_spinning_kernel(stack: Stack) -> None:
    """h100-gpm's GPU 4 runs one small kernel: 100 % utilization, 3 % SM activity, no tensor work.

    The host detail panel shows that for the device, and the fleet panel a gap for the H100 model
    (its GPM GPUs average about 77 % busy and 55 % SM activity). Over 30 s: GPM and the sample
    buffer are read about every 5 s, so shorter windows see steps.
    """
    address = stack.exporters["h100-gpm"][0]
    by_title = {
        p["title"]: p
        for name in ("host-detail.json", "fleet-overview.json")
        for p in all_panels(json.loads((GRAFANA / name).read_text()))
    }
    host = by_title["Utilization, SM and tensor activity"]["targets"]
    fleet = by_title["Kernel time vs SM activity (GPM-capable models)"]["targets"]

    def values(targets: list[dict[str, Any]], **chosen: str) -> list[float] | None:
        at = time.time()
        found = [stack.query(substitute(t["expr"], __rate_interval="30s", **chosen), at) for t in targets]
        return [float(r[0]["value"][1]) for r in found] if all(len(r) == 1 for r in found) else None

    def spinning() -> list[float] | None:
        got = values(host[:3], instance=address, device="nvidia4")
        return got if got and got[0] > 0.8 else None  # a window that still holds the start reads less

    busy, sm, tensor = wait_for("nvidia4's busy, SM and tensor rates", spinning, 60, stack.procs)
    assert sm < 0.1 and tensor < 0.01, (busy, sm, tensor)

    def h100_gap() -> list[float] | None:
        got = values(fleet, instance=address)
        return got if got and got[0] > 0.6 else None

    util, sm_activity = wait_for("the H100 model's utilization and SM activity", h100_gap, 60, stack.procs)
    assert 0.3 < sm_activity < util - 0.1, (util, sm_activity)
    # GPUs without GPM (the A100s of p4d-idle-fleet) have no line at all.
    p4d = stack.exporters["p4d-idle-fleet"][0]
    assert [stack.query(substitute(t["expr"], instance=p4d)) for t in fleet] == [[], []]


def test_busy_without_sm_activity_names_the_spinning_gpu(stack: Stack) -> None:
    """The derived alert (for: 0s) settles on h100-gpm's nvidia4 alone (every device reads low SM
    activity for a moment at start, while the first GPM intervals fill the 5m window) and reaches
    Alertmanager with the "null" receiver only."""
    address = stack.exporters["h100-gpm"][0]
    query = 'ALERTS{alertname="AcceleratorBusyWithoutSmActivity",alertstate="firing",e2e="derived"}'

    def settled() -> set[tuple[str, str]] | None:
        firing = {(s["metric"]["instance"], s["metric"]["device"]) for s in stack.query(query)}
        return firing if firing == {(address, "nvidia4")} else None

    wait_for("AcceleratorBusyWithoutSmActivity on nvidia4 alone", settled, 60, stack.procs)

    def in_alertmanager() -> list[dict[str, Any]]:
        alerts = json.loads(http_get(f"{stack.alertmanager}/api/v2/alerts")[1])
        return [
            a
            for a in alerts
            if a["labels"].get("alertname") == "AcceleratorBusyWithoutSmActivity"
            and a["labels"].get("device") == "nvidia4"
            and a["labels"].get("e2e") == "derived"
        ]

    (alert,) = wait_for("AcceleratorBusyWithoutSmActivity in Alertmanager", in_alertmanager, 30, stack.procs)
    assert [r["name"] for r in alert["receivers"]] == ["null"]
    assert alert["labels"]["severity"] == "info" and alert["labels"]["team"]


def test_exporter_down_pages_platform(stack: Stack) -> None:
    """Runs last: stops one exporter, whose target then fires the derived AcceleratorExporterDown."""
    scenario = "g6-inference"
    address, proc = stack.exporters[scenario]
    proc.stop()
    stack.procs.remove(proc)

    def down_delivered() -> list[str]:
        return [
            r
            for r, labels in stack.webhook.alerts()
            if labels.get("alertname") == "AcceleratorExporterDown" and labels.get("instance") == address
        ]

    receivers = wait_for("AcceleratorExporterDown at the webhook", down_delivered, 30, stack.procs)
    assert set(receivers) == {"platform"}
