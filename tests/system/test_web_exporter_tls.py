"""The real exporter process behind --web.config.file: TLS, basic auth, and a bad file refused (issue 6)."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
from conftest import ROOT, exporter_env, start_exporter


def _get(port: int, context: ssl.SSLContext, path: str, auth: tuple[str, str] | None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.fixture(scope="module")
def tls_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp / "web.yml").write_text(
        "tls_server_config:\n"
        f"  cert_file: {tmp / 'server.pem'}\n"
        f"  key_file: {tmp / 'server.pem'}\n"
        "basic_auth_users:\n"
        f"  prometheus: '{hashed}'\n"
    )
    exporter = start_exporter(
        ["--demo", "p4d-idle-fleet", "--collector.interval", "1s", "--web.config.file", str(tmp / "web.yml")],
        tmp / "exporter.log",
        wait=False,  # conftest's readiness probe speaks plain HTTP; this one needs TLS and a password
    )
    port = exporter.port
    client = ssl.create_default_context()
    ca.configure_trust(client)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _get(port, client, "/-/ready", ("prometheus", "s3cret"))[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        exporter.stop()
        pytest.fail(f"the TLS exporter did not become ready:\n{exporter.log()}")
    yield port, client
    assert exporter.stop(timeout=10) == 0


def test_right_password_gets_metrics_over_tls(tls_exporter: tuple[int, ssl.SSLContext]) -> None:
    port, client = tls_exporter
    status, body = _get(port, client, "/metrics", ("prometheus", "s3cret"))
    assert status == 200 and b"accel_device_up" in body


def test_wrong_or_missing_password_is_refused(tls_exporter: tuple[int, ssl.SSLContext]) -> None:
    port, client = tls_exporter
    assert _get(port, client, "/metrics", ("prometheus", "wrong"))[0] == 401
    assert _get(port, client, "/metrics", ("nobody", "s3cret"))[0] == 401
    status, body = _get(port, client, "/metrics", None)
    assert status == 401 and b"accel_" not in body


def test_landing_page_is_behind_tls_and_the_password_too(tls_exporter: tuple[int, ssl.SSLContext]) -> None:
    port, client = tls_exporter
    status, body = _get(port, client, "/", ("prometheus", "s3cret"))
    assert status == 200 and b"<h2>Devices</h2>" in body and b"p4d.24xlarge" in body
    status, body = _get(port, client, "/", None)
    assert status == 401 and b"p4d.24xlarge" not in body


def test_plain_http_gets_no_metrics(tls_exporter: tuple[int, ssl.SSLContext]) -> None:
    port, _ = tls_exporter
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = s.recv(4096)
        except ConnectionResetError:
            reply = b""
    assert b"accel_" not in reply


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("basic_auth_user: {}\n", "basic_auth_user"),  # a typo of basic_auth_users
        ("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.pem\n", "nonexistent.pem"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)
def test_a_bad_web_config_is_refused_at_start_with_one_message(tmp_path: Path, text: str, named: str) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--web.config.file", str(bad), "--check-config"],
        cwd=ROOT,
        env=exporter_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1
