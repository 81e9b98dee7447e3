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
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import pick_free_port

ROOT = Path(__file__).resolve().parent.parent
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


def test_critical_mutes_warning_of_the_same_alert(alertmanager: str) -> None:
    states = _states(
        alertmanager,
        [
            _alert(alertname="AcceleratorTeamIdleSpendHigh", severity="critical", team="ml-research", instance="d1"),
            _alert(
                alertname="AcceleratorTeamIdleSpendHigh",
                severity="warning",
                team="ml-research",
                instance="d1",
                device="x",
            ),
            _alert(
                alertname="AcceleratorTeamIdleSpendHigh",
                severity="warning",
                team="inference",
                instance="d1",
                device="y",
            ),
        ],
    )
    assert states[("AcceleratorTeamIdleSpendHigh", "d1", "x")] == "suppressed"
    assert states[("AcceleratorTeamIdleSpendHigh", "d1", "y")] == "active"
