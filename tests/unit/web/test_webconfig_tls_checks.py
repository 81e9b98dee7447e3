"""Certificates out of their dates are reported; a TLS version range nothing can speak is refused (issue 13, item 8)."""

from __future__ import annotations

import logging
import ssl
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import trustme
from conftest import run_cli
from cryptography import x509

from exporter.web.certdates import certificate_validity
from exporter.web.webconfig import WebConfigInvalid, load_web_config

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def web_config(tmp_path: Path, cert: trustme.LeafCert, extra: str = "") -> Path:
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    path = tmp_path / "web.yml"
    path.write_text(f"tls_server_config: {{cert_file: server.pem, key_file: server.pem{extra}}}\n")
    return path


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW - timedelta(days=400), NOW - timedelta(days=35)),  # UTCTime
        (
            datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc),
            datetime(2051, 6, 1, tzinfo=timezone.utc),
        ),  # GeneralizedTime after
    ],
)
def test_validity_dates_are_read_as_the_certificate_states_them(not_before: datetime, not_after: datetime) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1", not_before=not_before, not_after=not_after)
    pem = cert.private_key_and_cert_chain_pem.bytes().decode()
    parsed = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    assert certificate_validity(pem) == (parsed.not_valid_before_utc, parsed.not_valid_after_utc)
    assert certificate_validity("no certificate here") is None
    assert certificate_validity("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----") is None


@pytest.mark.parametrize(
    ("not_before", "not_after", "expected"),
    [
        (NOW - timedelta(days=400), NOW - timedelta(days=35), "the certificate has expired"),
        (NOW + timedelta(days=2), NOW + timedelta(days=90), "the certificate is not valid yet"),
    ],
)
def test_an_expired_or_future_certificate_loads_with_a_warning_naming_the_file_and_dates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, not_before: datetime, not_after: datetime, expected: str
) -> None:
    path = web_config(tmp_path, trustme.CA().issue_cert("127.0.0.1", not_before=not_before, not_after=not_after))
    with caplog.at_level(logging.WARNING, logger="exporter.web.webconfig"):
        load_web_config(path)
    (message,) = [record.getMessage() for record in caplog.records]
    assert str(tmp_path / "server.pem") in message and expected in message
    assert f"valid from {not_before:%Y-%m-%d %H:%M:%S}Z to {not_after:%Y-%m-%d %H:%M:%S}Z" in message


def test_a_current_certificate_loads_quietly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = web_config(tmp_path, trustme.CA().issue_cert("127.0.0.1"))
    with caplog.at_level(logging.WARNING, logger="exporter.web.webconfig"):
        load_web_config(path)
    assert caplog.records == []


def test_check_config_shows_the_expiry(tmp_path: Path) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1", not_after=NOW - timedelta(days=1))
    result = run_cli("--check-config", "--web.config.file", str(web_config(tmp_path, cert)))
    assert result.returncode == 0
    assert "the certificate has expired" in result.stderr and "server.pem" in result.stderr


def _openssl_speaks_tls11() -> bool:
    """Whether this OpenSSL, at its default security level, completes a TLS 1.1 handshake at all."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for context in (server, client):
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = [client.wrap_bio(b, a), server.wrap_bio(a, b, server_side=True)]
    try:
        for _ in range(10):
            for end in list(ends):
                try:
                    end.do_handshake()
                    ends.remove(end)
                except ssl.SSLWantReadError:
                    pass
    except ssl.SSLError:
        return False
    return not ends


def test_a_version_range_openssl_will_not_speak_is_refused_by_check_config(tmp_path: Path) -> None:
    if _openssl_speaks_tls11():
        pytest.skip(f"{ssl.OPENSSL_VERSION} still negotiates TLS 1.1 at its default security level")
    path = web_config(tmp_path, trustme.CA().issue_cert("127.0.0.1"), ", min_version: TLS10, max_version: TLS11")
    with pytest.raises(WebConfigInvalid, match="min_version/max_version: TLS10 to TLS11 allows no handshake"):
        load_web_config(path)
    result = run_cli("--check-config", "--web.config.file", str(path))
    assert result.returncode == 2 and "use TLS12 or TLS13" in result.stderr and "Traceback" not in result.stderr
    # The supported ranges still pass.
    for versions in ("", ", min_version: TLS13", ", max_version: TLS12", ", min_version: TLS10"):
        load_web_config(web_config(tmp_path, trustme.CA().issue_cert("127.0.0.1"), versions))
