"""web-config.yml parsing and validation: what loads, and the message for what does not."""

from __future__ import annotations

import importlib.util
import os
import ssl
from pathlib import Path

import bcrypt
import pytest
import trustme

from exporter.web.webconfig import (
    _TOP_KEYS,
    TLSConfig,
    WebConfig,
    WebConfigInvalid,
    build_ssl_context,
    load_web_config,
    parse_basic_auth,
)

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> Path:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "tls.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    assert load_web_config(write(tmp_path / "web.yml", "")) == WebConfig()


def test_full_config_loads_with_paths_relative_to_the_file(certs: Path) -> None:
    path = write(
        certs / "web.yml",
        f"""
tls_server_config:
  cert_file: tls.crt
  key_file: tls.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS13
http_server_config:
  headers:
    strict-transport-security: max-age=31536000
  http2: false
basic_auth_users:
  prometheus: '{HASH}'
""",
    )
    config = load_web_config(path)
    assert config.tls == TLSConfig(
        cert_file=certs / "tls.crt",
        key_file=certs / "tls.key",
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=certs / "ca.crt",
        min_version="TLS13",
        max_version="TLS13",
    )
    assert config.headers == (("Strict-Transport-Security", "max-age=31536000"),)  # canonical spelling
    assert config.users == {"prometheus": HASH}
    context = build_ssl_context(config.tls)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_server_confg: {}\n", "tls_server_confg: unknown key; allowed here: tls_server_config"),
        ("tls_server_config: {cert_file: a, key_file: b, foo: 1}\n", "tls_server_config.foo: unknown key"),
        ("tls_server_config: {cert_file: a, key_file: b, cipher_suites: [x]}\n", "cipher_suites: not supported"),
        ("rate_limit: {interval: 1s}\n", "rate_limit: not supported"),
        ("http_server_config: {headers: {Server: x}}\n", "headers.Server: this header cannot be set"),
        ("http_server_config: {colour: blue}\n", "http_server_config.colour: unknown key"),
        ("basic_auth_users: {prometheus: hunter2}\n", "basic_auth_users.prometheus: not a bcrypt hash"),
        ("basic_auth_users: [prometheus]\n", "basic_auth_users: must be a mapping"),
        ("tls_server_config: {cert_file: a}\n", "tls_server_config.key_file: missing"),
        ("tls_server_config: {cert_file: a, key_file: b, min_version: TLS14}\n", "'TLS14' is not one of TLS10"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Maybe}\n", "'Maybe' is not one of"),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}\n",
            "client_auth_type RequireAndVerifyClientCert needs the CA",
        ),
        ("tls_server_config: {cert_file: a, key_file: b, client_ca_file: c}\n", "client_auth_type is NoClientCert"),
        (
            "tls_server_config: {cert_file: a, key_file: b, min_version: TLS13, max_version: TLS12}\n",
            "min_version: TLS13 is above max_version TLS12",
        ),
        ("- a list\n", "the file must be a YAML mapping"),
        ("tls_server_config: [\n", "not valid YAML at line"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "web.yml", text)
    with pytest.raises(WebConfigInvalid) as info:
        load_web_config(path)
    message = str(info.value)
    assert message.startswith(f"web config {path}: ")
    assert expected in message
    assert "Traceback" not in message


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", "foo: 1\nbar: 2\nbasic_auth_users: {u: x}\n")
    with pytest.raises(WebConfigInvalid) as info:
        load_web_config(path)
    assert all(part in str(info.value) for part in ("foo: unknown key", "bar: unknown key", "basic_auth_users.u"))


def test_basic_auth_without_bcrypt_installed_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # bcrypt is imported only where basic auth is configured; without it the file is refused at load.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bcrypt" else real_find_spec(name, *a)
    )
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    path = write(tmp_path / "web.yml", f"basic_auth_users: {{prometheus: '{hashed}'}}\n")
    with pytest.raises(WebConfigInvalid, match="basic_auth_users: needs the Python package bcrypt"):
        load_web_config(path)
    assert load_web_config(write(tmp_path / "plain.yml", "http_server_config: {}\n")).users == {}


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(WebConfigInvalid, match=r"web config .*nope.yml: cannot read it: No such file"):
        load_web_config(tmp_path / "nope.yml")


def test_certificate_problems_are_found_at_load(certs: Path, ca: trustme.CA) -> None:
    other = ca.issue_cert("other.example")
    other.private_key_pem.write_to_path(str(certs / "other.key"))
    path = write(certs / "web.yml", "tls_server_config: {cert_file: tls.crt, key_file: other.key}\n")
    with pytest.raises(WebConfigInvalid, match="key matches the certificate"):
        load_web_config(path)
    write(certs / "web.yml", "tls_server_config: {cert_file: missing.crt, key_file: tls.key}\n")
    with pytest.raises(WebConfigInvalid, match=r"cannot load .*missing.crt"):
        load_web_config(path)


def test_unverified_client_auth_modes_are_served_verified(certs: Path) -> None:
    # Python's ssl cannot request a client certificate without verifying it.
    for mode, expected in (("RequestClientCert", ssl.CERT_OPTIONAL), ("RequireAnyClientCert", ssl.CERT_REQUIRED)):
        text = f"tls_server_config: {{cert_file: tls.crt, key_file: tls.key, client_auth_type: {mode}, client_ca_file: ca.crt}}\n"
        config = load_web_config(write(certs / "web.yml", text))
        assert config.tls is not None
        assert build_ssl_context(config.tls).verify_mode == expected


def test_htpasswd_style_2y_hashes_are_accepted(tmp_path: Path) -> None:
    hashed = HASH.replace("$2b$", "$2y$")
    config = load_web_config(write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{hashed}'\n"))
    assert config.users == {"alice": hashed}
    assert bcrypt.checkpw(b"secret", hashed.encode())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic YWxpY2U6czNjcjN0", ("alice", b"s3cr3t")),
        ("basic YWxpY2U6YTpi", ("alice", b"a:b")),  # ':' allowed in the password
        ("Bearer abc", None),
        ("Basic !!!", None),
        ("Basic YWxpY2U=", None),  # no ':'
        ("", None),
        (None, None),
    ],
)
def test_parse_basic_auth(header: str | None, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic_auth(header) == expected


def test_tls_file_problems_are_listed_with_the_other_problems(certs: Path) -> None:
    # Issue 16 item 9: a bad key elsewhere used to hide every certificate problem, and a
    # certificate that does not load hid a client CA that does not load either.
    path = write(
        certs / "web.yml",
        "tls_server_config:\n"
        "  cert_file: missing.crt\n"
        "  key_file: tls.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: missing-ca.crt\n"
        "basic_auth_users: {prometheus: hunter2}\n"
        "colour: blue\n",
    )
    with pytest.raises(WebConfigInvalid) as info:
        load_web_config(path)
    message = str(info.value)
    assert message.startswith(f"web config {path}: 4 problems:\n")
    lines = message.splitlines()[1:]
    assert len(lines) == 4 and all(line.startswith("  - ") for line in lines), message
    assert any("colour: unknown key" in line for line in lines)
    assert any("basic_auth_users.prometheus: not a bcrypt hash" in line for line in lines)
    assert any("cert_file/key_file: cannot load" in line and "missing.crt" in line for line in lines)
    assert any("client_ca_file: cannot load" in line and "missing-ca.crt" in line for line in lines)
    assert info.value.errors == [line[4:] for line in lines]


def test_every_special_file_is_named(certs: Path) -> None:
    os.mkfifo(certs / "cert.fifo")
    os.mkfifo(certs / "key.fifo")
    path = write(certs / "web.yml", "tls_server_config: {cert_file: cert.fifo, key_file: key.fifo}\n")
    with pytest.raises(WebConfigInvalid) as info:
        load_web_config(path)
    assert len(info.value.errors) == 2
    assert "cert_file" in info.value.errors[0] and "key_file" in info.value.errors[1]
    assert all("FIFO (named pipe), not a regular file" in error for error in info.value.errors)


def test_one_problem_stays_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", "colour: blue\n")
    with pytest.raises(WebConfigInvalid) as info:
        load_web_config(path)
    assert str(info.value) == f"web config {path}: colour: unknown key; allowed here: {', '.join(_TOP_KEYS)}"
    assert info.value.errors == [str(info.value).split(": ", 1)[1]]
