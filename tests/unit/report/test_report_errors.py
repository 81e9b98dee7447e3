"""`accel-cost-exporter report` failures: one clear line, exit 2 for bad flags and 1 for a failed
run, never a traceback; and the connection options (token, basic auth, headers) reach the server."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from conftest import pick_free_port
from report_helpers import run_report

from tests.fakes.server import closed_port_url, serve, silent_listener


def _assert_one_line(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--range", "7d"], "--prometheus.url"),
        (["--prometheus.url", "ftp://x"], "--prometheus.url"),
        (["--prometheus.url", "http://x", "--range", "7 days"], "--range"),
        (["--prometheus.url", "http://x", "--range", "0s"], "--range"),
        (["--prometheus.url", "http://x", "--end", "yesterday"], "--end"),
        (["--prometheus.url", "http://x", "--end", "2026-01-01T00:00:00"], "time zone"),
        (["--prometheus.url", "http://x", "--format", "pdf"], "--format"),
        (["--prometheus.url", "http://x", "--selector", "job=accel"], "--selector"),
        (["--prometheus.url", "http://x", "--prometheus.header", "X-Scope-OrgID"], "--prometheus.header"),
        (["--prometheus.url", "http://x", "--prometheus.bearer-token-file", "/nonexistent"], "bearer-token-file"),
        (["--prometheus.url", "http://x", "--prometheus.cert-file", "/etc/hostname"], "--prometheus.key-file"),
        (["--prometheus.url", "http://x", "--aws.regions", "us-east-1,Mars"], "--aws.regions"),
        (["--prometheus.url", "http://x", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = run_report(args)
    assert result.returncode == 2, result.stderr
    _assert_one_line(result.stderr, needle)
    assert result.stdout == ""


def test_an_unreachable_server_fails_with_exit_1() -> None:
    url = closed_port_url()
    result = run_report(["--prometheus.url", url, "--quiet"])
    assert result.returncode == 1
    _assert_one_line(result.stderr, "cannot reach", url)


def test_a_query_that_never_answers_times_out() -> None:
    with silent_listener() as url:
        started = time.monotonic()
        result = run_report(["--prometheus.url", url, "--prometheus.timeout", "1s", "--quiet"])
        assert time.monotonic() - started < 60
    assert result.returncode == 1
    _assert_one_line(result.stderr, "timed out", "--prometheus.timeout")


class FakeApi:
    """Answers every query with a fixed status and body; records the requests' headers."""

    def __init__(self, status: int, body: str, content_type: str = "application/json") -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.Response(status=self.status, text=self.body, content_type=self.content_type)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


@pytest.fixture
def fake_api(request: pytest.FixtureRequest) -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi(*request.param)
    with serve(api.app()) as server:
        yield api, server.url


def _error(kind: str, message: str) -> str:
    return json.dumps({"status": "error", "errorType": kind, "error": message})


@pytest.mark.parametrize(
    ("fake_api", "needles"),
    [
        ((401, "Unauthorized"), ["HTTP 401", "bearer-token-file"]),
        ((404, "404 page not found", "text/plain"), ["HTTP 404", "base"]),
        ((400, _error("bad_data", 'parse error: unexpected "}"')), ["HTTP 400", "parse error", "PromQL"]),
        ((503, _error("unavailable", "too many queries")), ["HTTP 503", "too many queries"]),
        ((422, _error("timeout", "query timed out in expression evaluation")), ["HTTP 422", "--prometheus.timeout"]),
        ((200, "<html>login</html>", "text/html"), ["not a Prometheus API answer"]),
    ],
    indirect=["fake_api"],
)
def test_server_errors_fail_with_exit_1_and_the_reason(fake_api: tuple[FakeApi, str], needles: list[str]) -> None:
    _, url = fake_api
    result = run_report(["--prometheus.url", url, "--quiet"])
    assert result.returncode == 1
    _assert_one_line(result.stderr, *needles)
    assert result.stdout == ""


EMPTY = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})


@pytest.mark.parametrize("fake_api", [(200, EMPTY)], indirect=True)
def test_token_basic_auth_and_extra_headers_reach_the_server(fake_api: tuple[FakeApi, str], tmp_path: Path) -> None:
    api, url = fake_api
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    result = run_report(
        [
            "--prometheus.url",
            url,
            "--quiet",
            "--prometheus.bearer-token-file",
            str(token),
            "--prometheus.header",
            "X-Scope-OrgID: team-a",
        ]
    )
    # An empty server is a failed run, but every query carried the token and the tenant header.
    assert result.returncode == 1 and "no exporter series" in result.stderr
    assert api.headers
    assert all(h.get("Authorization") == "Bearer s3cret-token" for h in api.headers)
    assert all(h.get("X-Scope-OrgID") == "team-a" for h in api.headers)
    api.headers.clear()
    result = run_report(
        [
            "--prometheus.url",
            url,
            "--quiet",
            "--prometheus.basic-auth-user",
            "audit",
            "--prometheus.basic-auth-password-file",
            str(password),
        ]
    )
    assert result.returncode == 1
    assert all(h.get("Authorization") == "Basic YXVkaXQ6aHVudGVyMg==" for h in api.headers)


@pytest.fixture
def mtls_api(tmp_path: Path) -> Iterator[tuple[FakeApi, str, Path, Path, Path]]:
    """The fake API over HTTPS that requires a client certificate signed by the test CA."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("report-client")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    api = FakeApi(200, EMPTY)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(api.app())
    loop.run_until_complete(runner.setup())
    port = pick_free_port()
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield api, f"https://127.0.0.1:{port}", ca_file, cert_file, key_file
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_tls_with_a_ca_file_and_a_client_certificate(mtls_api: tuple[FakeApi, str, Path, Path, Path]) -> None:
    api, url, ca_file, cert_file, key_file = mtls_api
    tls = ["--prometheus.ca-file", str(ca_file), "--prometheus.cert-file", str(cert_file)]
    result = run_report(["--prometheus.url", url, "--quiet", *tls, "--prometheus.key-file", str(key_file)])
    # Through TLS and mTLS to the (empty) server: the run fails only for want of series.
    assert result.returncode == 1
    _assert_one_line(result.stderr, "no exporter series")
    assert api.headers
    without_ca = run_report(["--prometheus.url", url, "--quiet"])
    assert without_ca.returncode == 1
    _assert_one_line(without_ca.stderr, "cannot reach", "certificate")
