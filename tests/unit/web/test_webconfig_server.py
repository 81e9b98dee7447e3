"""TLS, mTLS, basic auth and reloads through a real aiohttp server on 127.0.0.1 with throwaway certificates."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import pytest_asyncio
import trustme
from aiohttp import web
from cryptography import x509

from exporter.web import webconfig
from exporter.web.webconfig import WebConfigInvalid, WebConfigWatcher, make_auth_middleware

ROUNDS = 8  # ~15 ms a check: slow enough to time, fast enough for CI
PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(ROUNDS)).decode()


@dataclass
class Server:
    port: int
    watcher: WebConfigWatcher
    runner: web.AppRunner

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def install_cert(directory: Path, ca: trustme.CA) -> int:
    """Issue a server certificate into tls.crt/tls.key; return its serial number."""
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "tls.crt"))
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


def client_context(ca: trustme.CA, *, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def tls11_client(ca: trustme.CA) -> ssl.SSLContext:
    context = client_context(ca)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.0/1.1 at its default level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def handshake_with_permissive_server(ca: trustme.CA, client: ssl.SSLContext) -> str | None:
    """Handshake `client` with a blocking loopback server that allows TLS 1.0+; return the version."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def accept() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            version = tls.version()
        thread.join(10)
    return version


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    runners: list[web.AppRunner] = []

    async def start(path: Path, check_interval: float = 0.0) -> Server:
        watcher = WebConfigWatcher(path, check_interval=check_interval)

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(text="accel_device_up 1\n")

        app = web.Application(middlewares=[make_auth_middleware(watcher)])
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/-/healthy", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=watcher.ssl_context())
        await site.start()
        return Server(port=runner.addresses[0][1], watcher=watcher, runner=runner)

    yield start
    for runner in runners:
        await runner.cleanup()


async def get(
    url: str, *, ssl_context: ssl.SSLContext | bool = True, auth: tuple[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    headers = {"Authorization": basic(*auth)} if auth else {}
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ssl_context, headers=headers) as response:
        await response.read()
        return response.status, dict(response.headers)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def peer_serial(port: int, context: ssl.SSLContext) -> int:
    """Open a fresh TLS connection and return the serial number of the certificate the server sent."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.asyncio
async def test_basic_auth_right_wrong_unknown_and_missing(tmp_path: Path, serve: Callable[..., object]) -> None:
    path = tmp_path / "web.yml"
    path.write_text(
        f"basic_auth_users:\n  prometheus: '{HASH}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    server: Server = await serve(path)  # type: ignore[misc]
    url = f"{server.http}/metrics"
    status, headers = await get(url, auth=("prometheus", PASSWORD))
    assert status == 200
    assert headers["X-Frame-Options"] == "deny"
    for auth in (("prometheus", "wrong"), ("mallory", PASSWORD), None):
        status, headers = await get(url, auth=auth)
        assert status == 401, auth
        assert headers["WWW-Authenticate"].startswith('Basic realm="accel-cost-exporter"')
        assert headers["X-Frame-Options"] == "deny"
    # Every path is protected, health included (as node_exporter does).
    assert (await get(f"{server.http}/-/healthy"))[0] == 401
    assert (await get(f"{server.http}/nope", auth=("prometheus", PASSWORD)))[0] == 404


@pytest.mark.asyncio
async def test_successful_checks_are_cached_and_failures_are_not(
    tmp_path: Path, serve: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real = webconfig._bcrypt_ok

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(webconfig, "_bcrypt_ok", counting)
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    server: Server = await serve(path)  # type: ignore[misc]
    for _ in range(3):
        assert (await get(f"{server.http}/metrics", auth=("prometheus", PASSWORD)))[0] == 200
    assert len(calls) == 1  # bcrypt paid once
    for _ in range(2):
        assert (await get(f"{server.http}/metrics", auth=("prometheus", "nope")))[0] == 401
    assert len(calls) == 3  # a wrong password is never cached
    assert (await get(f"{server.http}/metrics", auth=("ghost", "nope")))[0] == 401
    assert len(calls) == 4  # an unknown user still costs a bcrypt check


@pytest.mark.asyncio
async def test_tls_and_required_client_certificates(
    tmp_path: Path, ca: trustme.CA, serve: Callable[..., object]
) -> None:
    install_cert(tmp_path, ca)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    server: Server = await serve(path)  # type: ignore[misc]
    url = f"{server.https}/metrics"
    good = client_context(ca, cert=ca.issue_cert("prometheus@example.invalid"))
    assert (await get(url, ssl_context=good))[0] == 200

    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await get(url, ssl_context=client_context(ca))  # no client certificate
    stranger = trustme.CA()
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await get(url, ssl_context=client_context(ca, cert=stranger.issue_cert("intruder")))
    with pytest.raises(aiohttp.ClientError):
        await get(f"{server.http}/metrics")  # plain HTTP on the TLS port


@pytest.mark.asyncio
async def test_tls11_client_is_refused_when_min_is_tls12(
    tmp_path: Path, ca: trustme.CA, serve: Callable[..., object]
) -> None:
    install_cert(tmp_path, ca)
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: tls.crt, key_file: tls.key, min_version: TLS12}\n")
    server: Server = await serve(path)  # type: ignore[misc]

    old = tls11_client(ca)
    # Control: this client really speaks TLS 1.1 to a server that allows it ...
    assert await asyncio.to_thread(handshake_with_permissive_server, ca, old) == "TLSv1.1"
    # ... and our server refuses it (asyncio drops the connection, or the alert arrives).
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", server.port, ssl=old)

    modern = client_context(ca)
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert (await get(f"{server.https}/metrics", ssl_context=modern))[0] == 200


@pytest.mark.asyncio
async def test_rotated_certificate_is_served_without_restart(
    tmp_path: Path, ca: trustme.CA, serve: Callable[..., object]
) -> None:
    first = install_cert(tmp_path, ca)
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: tls.crt, key_file: tls.key}\n")
    server: Server = await serve(path, 0.0)  # type: ignore[misc]
    context = server.watcher.ssl_context()
    client = client_context(ca)
    assert await peer_serial(server.port, client) == first

    second = install_cert(tmp_path, ca)
    assert second != first
    # A scrape (request or handshake) notices the change; every handshake after it gets the new certificate.
    assert (await get(f"{server.https}/metrics", ssl_context=client))[0] == 200
    assert await peer_serial(server.port, client) == second
    assert server.watcher.ssl_context() is context  # rotated in place, same SSLContext


@pytest.mark.asyncio
async def test_bad_file_on_reload_keeps_the_old_config(tmp_path: Path, serve: Callable[..., object]) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    server: Server = await serve(path, 0.0)  # type: ignore[misc]
    url = f"{server.http}/metrics"

    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\nbasic_auth_user: {{}}\n")
    assert (await get(url, auth=("prometheus", PASSWORD)))[0] == 200
    assert (await get(url))[0] == 401  # auth still enforced
    assert "basic_auth_user: unknown key" in server.watcher.last_error

    other = bcrypt.hashpw(b"new password", bcrypt.gensalt(4)).decode()
    path.write_text(f"basic_auth_users:\n  prometheus: '{other}'\n")
    assert (await get(url, auth=("prometheus", PASSWORD)))[0] == 401  # the fixed file is taken
    assert (await get(url, auth=("prometheus", "new password")))[0] == 200
    assert server.watcher.last_error == ""


@pytest.mark.asyncio
async def test_checks_are_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("")
    watcher = WebConfigWatcher(path, check_interval=3600)
    path.write_text("basic_auth_users: {}\nfoo: 1\n")
    assert watcher.current() == webconfig.WebConfig()  # not looked at yet
    assert watcher.reload_if_changed() is False and "foo: unknown key" in watcher.last_error


def test_bad_file_at_start_raises(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: /nonexistent/tls.crt\n  key_file: /nonexistent/tls.key\n")
    with pytest.raises(WebConfigInvalid) as info:
        WebConfigWatcher(path)
    assert str(info.value).startswith(f"web config {path}: tls_server_config.cert_file/key_file: cannot load")
