"""The inhibit rules of alerts/alertmanager.example.yml, in a real Alertmanager.

amtool can test routes but not inhibitions, so this starts prometheus-alertmanager on 127.0.0.1
with the example configuration (receivers pointed at a local sink), posts alerts through its API
and reads back which ones it marks suppressed, and by what.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from conftest import ROOT, pick_free_port, wait_until

AM_CONFIG = ROOT / "alerts" / "alertmanager.example.yml"
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

pytestmark = pytest.mark.skipif(ALERTMANAGER is None, reason="needs prometheus-alertmanager (apt-get install)")


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _request(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        text = resp.read()
    return json.loads(text) if text else None


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert ALERTMANAGER is not None
    tmp = tmp_path_factory.mktemp("am")
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    config = yaml.safe_load(AM_CONFIG.read_text())
    for receiver in config["receivers"]:
        if "webhook_configs" in receiver:
            receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{sink.server_address[1]}/"}]
    (tmp / "am.yml").write_text(yaml.safe_dump(config))
    port = pick_free_port()
    log = (tmp / "am.log").open("wb")
    proc = subprocess.Popen(
        [
            ALERTMANAGER,
            f"--config.file={tmp / 'am.yml'}",
            f"--storage.path={tmp}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp / "am.log").read_text()
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "alertmanager did not become ready"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        sink.shutdown()
        sink.server_close()


def _alert(**labels: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "labels": {"job": "accel", **labels},
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(minutes=10)).isoformat(),
    }


def _states(url: str, alerts: list[dict[str, Any]]) -> dict[tuple[str, str, str], str]:
    """Post `alerts` and return (alertname, instance, device) -> active|suppressed."""
    _request(f"{url}/api/v2/alerts", alerts)
    got = _request(f"{url}/api/v2/alerts")
    out = {}
    for a in got:
        labels = a["labels"]
        key = (labels["alertname"], labels.get("instance", ""), labels.get("device", ""))
        out[key] = "suppressed" if a["status"]["inhibitedBy"] else a["status"]["state"]
    return out


def test_host_idle_mutes_device_idle_alerts_of_that_host(alertmanager: str) -> None:
    states = _states(
        alertmanager,
        [
            _alert(alertname="AcceleratorHostIdle", severity="warning", instance="a1"),
            _alert(
                alertname="AcceleratorIdle", severity="warning", instance="a1", device="nvidia0", team="ml-research"
            ),
            _alert(
                alertname="AcceleratorAbandoned", severity="warning", instance="a1", device="nvidia1", team="inference"
            ),
            _alert(
                alertname="AcceleratorIdle", severity="warning", instance="a2", device="nvidia0", team="ml-research"
            ),
        ],
    )
    assert states[("AcceleratorHostIdle", "a1", "")] == "active"
    assert states[("AcceleratorIdle", "a1", "nvidia0")] == "suppressed"
    assert states[("AcceleratorAbandoned", "a1", "nvidia1")] == "suppressed"
    assert states[("AcceleratorIdle", "a2", "nvidia0")] == "active"


def test_exporter_down_mutes_cost_alerts_of_that_host(alertmanager: str) -> None:
    states = _states(
        alertmanager,
        [
            _alert(alertname="AcceleratorExporterDown", severity="warning", instance="b1:11094"),
            _alert(
                alertname="AcceleratorLongRunningLowUtilization",
                severity="warning",
                instance="b1:11094",
                device="nvidia0",
            ),
            _alert(alertname="AcceleratorExporterStale", severity="warning", instance="b1:11094", collector="nvml"),
            _alert(
                alertname="AcceleratorLongRunningLowUtilization",
                severity="warning",
                instance="b2:11094",
                device="nvidia0",
            ),
        ],
    )
    assert states[("AcceleratorLongRunningLowUtilization", "b1:11094", "nvidia0")] == "suppressed"
    assert states[("AcceleratorExporterStale", "b1:11094", "")] == "suppressed"
    assert states[("AcceleratorLongRunningLowUtilization", "b2:11094", "nvidia0")] == "active"


def test_broken_device_mutes_its_idle_alert_only(alertmanager: str) -> None:
    states = _states(
        alertmanager,
        [
            _alert(alertname="AcceleratorDeviceLost", severity="critical", instance="c1", device="nvidia3"),
            _alert(alertname="AcceleratorIdle", severity="warning", instance="c1", device="nvidia3", team="inference"),
            _alert(alertname="AcceleratorIdle", severity="warning", instance="c1", device="nvidia4", team="inference"),
        ],
    )
    assert states[("AcceleratorDeviceLost", "c1", "nvidia3")] == "active"
    assert states[("AcceleratorIdle", "c1", "nvidia3")] == "suppressed"
    assert states[("AcceleratorIdle", "c1", "nvidia4")] == "active"


def _active_groups(url: str, job: str) -> dict[str, list[str]]:
    """receiver -> group keys of the groups of `job` holding at least one alert nobody muted."""
    out: dict[str, list[str]] = {}
    for group in _request(f"{url}/api/v2/alerts/groups"):
        if group["labels"].get("job") != job:
            continue
        if any(a["status"]["state"] == "active" for a in group["alerts"]):
            out.setdefault(group["receiver"]["name"], []).append(json.dumps(group["labels"], sort_keys=True))
    return out


def _groups_once_settled(url: str, job: str, expected: dict[str, int]) -> dict[str, list[str]]:
    """`_active_groups` once each receiver has `expected` groups: Alertmanager aggregates and marks
    posted alerts in the background, so right after the POST a loaded machine may show none yet.
    Fails with what it last saw if that never happens."""
    seen: list[dict[str, list[str]]] = []

    def settled() -> bool:
        seen.append(_active_groups(url, job))
        return {receiver: len(keys) for receiver, keys in seen[-1].items()} == expected

    wait_until(settled, f"Alertmanager groups {expected}", timeout=60, explain=lambda: f"last seen: {seen[-1]}")
    return seen[-1]


def test_twelve_abandoned_hosts_notify_each_owner_once(alertmanager: str) -> None:
    """Issue 11: 12 hosts left to abandoned jobs paged FinOps 12 times and the team 12 more."""
    job = "accel-abandoned"
    alerts = [
        _alert(job=job, alertname="AcceleratorTeamIdleSpendHigh", severity="warning", team="ml-research"),
        _alert(job=job, alertname="AcceleratorFleetUnderutilized", severity="warning"),
    ]
    for h in range(12):
        host = {"job": job, "instance": f"p4d-{h}:11094", "severity": "warning"}
        alerts += [
            _alert(**host, alertname="AcceleratorHostIdle", team="ml-research"),
            _alert(**host, alertname="AcceleratorHostUnderutilized", team="ml-research"),
        ]
        for d in range(2):
            dev = {**host, "device": f"nvidia{d}", "team": "ml-research"}
            alerts += [
                _alert(**dev, alertname="AcceleratorAbandoned"),
                _alert(**dev, alertname="AcceleratorLongRunningLowUtilization", pid=str(100 + d), user="ann"),
            ]
    _request(f"{alertmanager}/api/v2/alerts", alerts)
    # The team hears once (AcceleratorHostIdle listing the 12 hosts), FinOps once (the fleet).
    groups = _groups_once_settled(alertmanager, job, {"ml-research": 1, "finops": 1})
    assert "AcceleratorHostIdle" in groups["ml-research"][0]
    states = _states(alertmanager, [])
    assert states[("AcceleratorHostUnderutilized", "p4d-3:11094", "")] == "suppressed"
    assert states[("AcceleratorLongRunningLowUtilization", "p4d-3:11094", "nvidia1")] == "suppressed"
    assert states[("AcceleratorTeamIdleSpendHigh", "", "")] == "suppressed"


def test_42_hosts_under_the_line_are_one_notification_per_team(alertmanager: str) -> None:
    job = "accel-story"
    teams = ("ml-research", "inference", "web-search")
    alerts = [_alert(job=job, alertname="AcceleratorFleetUnderutilized", severity="warning")]
    for h in range(42):
        host = {"job": job, "instance": f"p4d-{h:02d}:11094", "severity": "warning", "team": teams[h % 3]}
        alerts += [
            _alert(**host, alertname="AcceleratorHostUnderutilized"),
            _alert(**host, alertname="AcceleratorLongRunningLowUtilization", device="nvidia0", pid="7", user="x"),
        ]
    _request(f"{alertmanager}/api/v2/alerts", alerts)
    # web-search has no route of its own: the root receiver, FinOps, with the fleet alert.
    _groups_once_settled(alertmanager, job, {"ml-research": 1, "inference": 1, "finops": 2})
    states = _states(alertmanager, [])
    assert states[("AcceleratorHostUnderutilized", "p4d-05:11094", "")] == "active"
    assert states[("AcceleratorLongRunningLowUtilization", "p4d-05:11094", "nvidia0")] == "suppressed"
