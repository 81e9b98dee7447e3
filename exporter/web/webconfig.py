"""`--web.config.file`: the exporter-toolkit web-config.yml subset (TLS, mTLS, bcrypt basic auth, headers).

Users know this file from node_exporter and dcgm-exporter; no Python package reads it, so this
module implements the part we support and refuses everything else by name:

    tls_server_config:
      cert_file: tls.crt                 # relative paths are relative to this file
      key_file: tls.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      min_version: TLS12                 # TLS10, TLS11, TLS12 (default), TLS13
      max_version: TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2b$10$...             # bcrypt

The server takes `WebConfigWatcher.ssl_context()` once at start and adds
`make_auth_middleware(watcher)`. The watcher re-reads the file and the certificate files when
they change (checked at most once a second, on a request or a TLS handshake), rotating the
certificate inside the same `ssl.SSLContext`; a bad new file is logged and the old config kept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import importlib.util
import logging
import os
import re
import secrets
import ssl
import stat
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter.config.files import NotRegularFile, file_kind, read_regular_file
from exporter.config.reader import YamlProblem, yaml_document
from exporter.web.certdates import certificate_validity
from exporter.workers import SerialDaemonExecutor

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit allows only these response headers to be set from the file.
ALLOWED_HEADERS = (
    "Content-Security-Policy",
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
)
REALM = "accel-cost-exporter"
MAX_FILE_BYTES = 4 * 1024 * 1024  # the web config and the files it names are read up to this size
CHECK_INTERVAL_SECONDS = 1.0

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
_HTTP_KEYS = ("headers", "http2")
# exporter-toolkit keys we know but do not implement: say so instead of "unknown key".
_UNSUPPORTED = {
    "rate_limit": "rate limiting is not implemented; put a proxy in front if you need it",
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported; use client_ca_file",
    "tls_server_config.client_allowed_sans": "SAN allow-lists are not supported; issue client certificates from a dedicated CA",
    "tls_server_config.cipher_suites": "the cipher list is OpenSSL's default for the TLS version",
    "tls_server_config.curve_preferences": "curves are OpenSSL's default",
    "tls_server_config.prefer_server_cipher_suites": "the server's order is always preferred",
}
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_UNVERIFIED_AUTH = {
    "RequestClientCert": "VerifyClientCertIfGiven",
    "RequireAnyClientCert": "RequireAndVerifyClientCert",
}


class WebConfigInvalid(Exception):
    """The web config file is unusable; the message names the file, each bad key and the fix.

    `errors` lists each problem as one line. Like the main
    configuration's ConfigInvalid, one problem is said on one line and several as a list.
    """

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors) or [message]

    @classmethod
    def listing(cls, file: Path, errors: Sequence[str]) -> WebConfigInvalid:
        """Every problem of `file`, each on its own line when there are several."""
        if len(errors) == 1:
            return cls(f"web config {file}: {errors[0]}", errors)
        items = "\n".join(f"  - {error}" for error in errors)
        return cls(f"web config {file}: {len(errors)} problems:\n{items}", errors)


@dataclass(frozen=True)
class TLSConfig:
    """`tls_server_config`, with paths made absolute against the config file's directory."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    @property
    def files(self) -> tuple[Path, ...]:
        """The files whose change means new certificates."""
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())


@dataclass(frozen=True)
class WebConfig:
    """A validated web config. The empty config means plain HTTP, no auth, no extra headers."""

    tls: TLSConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: tuple[tuple[str, str], ...] = ()

    @property
    def users(self) -> dict[str, str]:
        """User name -> bcrypt hash."""
        return dict(self.basic_auth_users)


# --- loading and validation ---------------------------------------------------------------------


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read, validate and return the web config at `path`; raise WebConfigInvalid listing every problem.

    Certificate files are opened and checked (key matches certificate, CA parses), so a config
    that loads here also works for the TLS server.
    """
    file = Path(path)
    try:
        raw = read_regular_file(file, MAX_FILE_BYTES)
    except NotRegularFile as exc:
        raise WebConfigInvalid(f"web config {file}: {exc}; point --web.config.file at a regular file") from None
    except OSError as exc:
        raise WebConfigInvalid(f"web config {file}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise WebConfigInvalid(f"web config {file}: the file is over 4 MiB; a web config is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebConfigInvalid(f"web config {file}: not UTF-8 text (bad byte at offset {exc.start})") from None
    try:
        data = yaml_document(text)
    except YamlProblem as exc:
        raise WebConfigInvalid(f"web config {file}: {exc}") from None
    errors: list[str] = []
    try:
        config = _parse(data, file.resolve().parent, errors)
    except (ValueError, OverflowError, RecursionError) as exc:
        # Values no validator expects (integers of thousands of digits, absurd nesting).
        raise WebConfigInvalid(f"web config {file}: unusable value: {str(exc)[:120]}") from None
    if config.tls is not None:
        # The certificate files are checked even when other keys are wrong: every problem at once.
        errors += _tls_file_problems(config.tls)
        if not errors:
            try:
                _check_versions_negotiable(config.tls)
            except WebConfigInvalid as exc:
                errors.append(str(exc))
    if errors:
        raise WebConfigInvalid.listing(file, errors)
    if config.tls is not None:
        _warn_if_not_valid_now(config.tls.cert_file)
    return config


def _warn_if_not_valid_now(cert_file: Path) -> None:
    """Log a warning when the server certificate has expired or is not valid yet (clients that verify refuse it)."""
    try:
        validity = certificate_validity(cert_file.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return  # it loaded a moment ago; a race with a rewrite is not worth a second message
    if validity is None:
        return
    not_before, not_after = validity
    now = datetime.now(timezone.utc)
    dates = f"valid from {not_before:%Y-%m-%d %H:%M:%S}Z to {not_after:%Y-%m-%d %H:%M:%S}Z"
    if now > not_after:
        log.warning("tls_server_config.cert_file %s: the certificate has expired (%s); renew it", cert_file, dates)
    elif now < not_before:
        log.warning(
            "tls_server_config.cert_file %s: the certificate is not valid yet (%s); check the clock", cert_file, dates
        )


def _parse(data: object, base: Path, errors: list[str]) -> WebConfig:
    if data is None:
        return WebConfig()
    if not isinstance(data, dict):
        errors.append(f"the file must be a YAML mapping with keys {', '.join(_TOP_KEYS)}, not {_kind(data)}")
        return WebConfig()
    _check_keys(data, _TOP_KEYS, "", errors)
    tls = _parse_tls(data.get("tls_server_config"), base, errors)
    headers = _parse_http(data.get("http_server_config"), errors)
    users = _parse_users(data.get("basic_auth_users"), errors)
    return WebConfig(tls=tls, headers=headers, basic_auth_users=users)


def _check_keys(section: dict[Any, Any], allowed: tuple[str, ...], prefix: str, errors: list[str]) -> None:
    for key in section:
        name = f"{prefix}{key}"
        if key in allowed:
            continue
        if name in _UNSUPPORTED:
            errors.append(f"{name}: not supported by accel-cost-exporter ({_UNSUPPORTED[name]}); remove it")
        else:
            errors.append(f"{name}: unknown key; allowed here: {', '.join(allowed)}")


def _parse_tls(section: object, base: Path, errors: list[str]) -> TLSConfig | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        errors.append(f"tls_server_config: must be a mapping, not {_kind(section)}")
        return None
    _check_keys(section, _TLS_KEYS, "tls_server_config.", errors)
    values: dict[str, str] = {}
    for key in _TLS_KEYS:
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            errors.append(f"tls_server_config.{key}: must be a string, not {_kind(value)}")
        values[key] = value if isinstance(value, str) else ""
    if not any(values.values()):
        return None  # an empty block means no TLS, as in exporter-toolkit
    cert, key = values["cert_file"], values["key_file"]
    if not cert or not key:
        for name in ("cert_file", "key_file"):
            if not values[name]:
                errors.append(f"tls_server_config.{name}: missing; TLS needs both cert_file and key_file")
        return None
    auth = values["client_auth_type"] or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        errors.append(f"tls_server_config.client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
    ca = values["client_ca_file"]
    if ca and auth == "NoClientCert":
        errors.append(
            "tls_server_config.client_ca_file: set but client_auth_type is NoClientCert; "
            "set client_auth_type: RequireAndVerifyClientCert (mTLS) or remove client_ca_file"
        )
    if not ca and auth != "NoClientCert" and auth in CLIENT_AUTH_TYPES:
        errors.append(
            f"tls_server_config.client_ca_file: client_auth_type {auth} needs the CA that signs client "
            "certificates; set client_ca_file"
        )
    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = values[name] or default
        if value not in TLS_VERSIONS:
            errors.append(f"tls_server_config.{name}: {value!r} is not one of {', '.join(TLS_VERSIONS)}")
            value = default
        versions[name] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        errors.append(
            f"tls_server_config.min_version: {versions['min_version']} is above max_version "
            f"{versions['max_version']}; lower min_version or raise max_version"
        )
    return TLSConfig(
        cert_file=base / cert,
        key_file=base / key,
        client_auth_type=auth,
        client_ca_file=(base / ca) if ca else None,
        min_version=versions["min_version"],
        max_version=versions["max_version"],
    )


def _parse_http(section: object, errors: list[str]) -> tuple[tuple[str, str], ...]:
    if section is None:
        return ()
    if not isinstance(section, dict):
        errors.append(f"http_server_config: must be a mapping, not {_kind(section)}")
        return ()
    _check_keys(section, _HTTP_KEYS, "http_server_config.", errors)
    http2 = section.get("http2")
    if http2 is not None and not isinstance(http2, bool):
        errors.append(f"http_server_config.http2: must be true or false, not {_kind(http2)}")
    headers = section.get("headers")
    if headers is None:
        return ()
    if not isinstance(headers, dict):
        errors.append(f"http_server_config.headers: must be a mapping of header name to value, not {_kind(headers)}")
        return ()
    allowed = {name.lower(): name for name in ALLOWED_HEADERS}
    result: list[tuple[str, str]] = []
    for name, value in headers.items():
        where = f"http_server_config.headers.{name}"
        if not isinstance(name, str) or name.lower() not in allowed:
            errors.append(f"{where}: this header cannot be set; allowed: {', '.join(ALLOWED_HEADERS)}")
        elif not isinstance(value, str) or not value or any(ch in value for ch in "\r\n"):
            errors.append(f"{where}: the value must be a non-empty one-line string")
        else:
            result.append((allowed[name.lower()], value))
    return tuple(result)


def _parse_users(section: object, errors: list[str]) -> tuple[tuple[str, str], ...]:
    if section is None:
        return ()
    if not isinstance(section, dict):
        errors.append(f"basic_auth_users: must be a mapping of user name to bcrypt hash, not {_kind(section)}")
        return ()
    if section and importlib.util.find_spec("bcrypt") is None:
        errors.append(
            "basic_auth_users: needs the Python package bcrypt, which is not installed; install it or remove basic_auth_users"
        )
        return ()
    users: list[tuple[str, str]] = []
    for user, hashed in section.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            errors.append(f"{where}: user names must be non-empty strings without ':'")
        elif not isinstance(hashed, str) or not _BCRYPT_RE.match(hashed):
            errors.append(
                f"{where}: not a bcrypt hash (expected $2y$10$ followed by 53 characters); "
                "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"
            )
        else:
            users.append((user, hashed))
    return tuple(users)


def _kind(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__}"


# --- TLS ---------------------------------------------------------------------------------------


def build_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """A server SSLContext for `tls`; raise WebConfigInvalid naming the file that does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_tls(context, tls)
    return context


def _tls_file_problems(tls: TLSConfig) -> list[str]:
    """Every TLS file of `tls` that does not load, each as one message (empty when all load)."""
    problems = []
    for key, file in _tls_files(tls):
        try:
            _refuse_special_file(f"tls_server_config.{key}", file)
        except WebConfigInvalid as exc:
            problems.append(str(exc))
    if problems:
        return problems  # OpenSSL would block reading a FIFO: open none of them
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for load in (_load_cert_chain, _load_client_ca):
        try:
            load(scratch, tls)
        except WebConfigInvalid as exc:
            problems.append(str(exc))
    return problems


def _tls_files(tls: TLSConfig) -> list[tuple[str, Path]]:
    named = (("cert_file", tls.cert_file), ("key_file", tls.key_file), ("client_ca_file", tls.client_ca_file))
    return [(key, file) for key, file in named if file is not None]


def _load_cert_chain(context: ssl.SSLContext, tls: TLSConfig) -> None:
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigInvalid(
            f"tls_server_config.cert_file/key_file: cannot load {tls.cert_file} with {tls.key_file}: "
            f"{_ssl_reason(exc)}; check both exist, are PEM, readable, and that the key matches the certificate"
        ) from None


def _load_client_ca(context: ssl.SSLContext, tls: TLSConfig) -> None:
    if tls.client_ca_file is None:
        return
    try:
        context.load_verify_locations(cafile=tls.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigInvalid(
            f"tls_server_config.client_ca_file: cannot load {tls.client_ca_file}: {_ssl_reason(exc)}"
        ) from None


def _apply_tls(context: ssl.SSLContext, tls: TLSConfig) -> None:
    """Load `tls` into `context` (new handshakes use it; connections already open keep theirs)."""
    for key, file in _tls_files(tls):
        _refuse_special_file(f"tls_server_config.{key}", file)
    _load_cert_chain(context, tls)
    _load_client_ca(context, tls)
    # Python's ssl cannot ask for a client certificate without verifying it, so the two
    # "unverified" modes are served as their verified counterparts against client_ca_file.
    auth = _UNVERIFIED_AUTH.get(tls.client_auth_type, tls.client_auth_type)
    context.verify_mode = {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }[auth]
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]


def _check_versions_negotiable(tls: TLSConfig) -> None:
    """Shake hands in memory with this certificate and version range; refuse a range OpenSSL will not speak.

    OpenSSL accepts TLS10/TLS11 as bounds but, at its default security level, then completes
    no handshake at all: such a server would refuse every scrape.
    """
    server = build_ssl_context(replace(tls, client_auth_type="NoClientCert", client_ca_file=None))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS10/TLS11 are deprecated: _apply_tls has warned already
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = TLS_VERSIONS[tls.min_version]
        client.maximum_version = TLS_VERSIONS[tls.max_version]
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = (client.wrap_bio(to_client, to_server), server.wrap_bio(to_server, to_client, server_side=True))
    done = [False, False]
    try:
        for _ in range(10):  # TLS 1.2 needs two round trips, 1.3 one
            for n, end in enumerate(ends):
                if not done[n]:
                    try:
                        end.do_handshake()
                        done[n] = True
                    except ssl.SSLWantReadError:
                        pass
            if all(done):
                return
    except ssl.SSLError as exc:
        raise WebConfigInvalid(
            f"tls_server_config.min_version/max_version: {tls.min_version} to {tls.max_version} allows no "
            f"handshake with {ssl.OPENSSL_VERSION} ({_ssl_reason(exc)}); use TLS12 or TLS13"
        ) from None
    raise WebConfigInvalid(f"tls_server_config: a test handshake with {tls.cert_file} did not complete")


def _refuse_special_file(key: str, path: Path) -> None:
    """OpenSSL would block reading a FIFO: refuse anything but a regular file (a missing one fails later)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise WebConfigInvalid(f"{key}: {path} is {file_kind(mode)}, not a regular file; point it at a PEM file")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


# --- watching the file ---------------------------------------------------------------------------

_Stamp = tuple[tuple[str, int, int, int, bytes], ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    """(path, inode, size, mtime_ns, sha256) per file; a missing or non-regular file stamps as zeros.

    The digest catches rewrites that keep size and mtime (file times tick in jiffies, so two
    writes a few milliseconds apart can share one); the files are small and read at most once
    a second.
    """
    result = []
    for path in paths:
        try:
            st = os.stat(path)
            digest = hashlib.sha256(read_regular_file(path, MAX_FILE_BYTES)).digest()
            result.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, digest))
        except OSError:
            result.append((str(path), 0, 0, 0, b""))
    return tuple(result)


class WebConfigWatcher:
    """Owns the current WebConfig and the server's one SSLContext, and follows changes on disk.

    Construction loads the file and raises WebConfigInvalid when it is bad. Afterwards
    `current()` re-checks the file and its certificate files at most once per
    `check_interval` seconds; a changed, valid file replaces the config and reloads the
    certificates into the same SSLContext; a changed, invalid one is logged and ignored. Turning
    TLS on or off needs a restart (the listening socket is already plain or TLS), and so does
    dropping trust in a client CA (OpenSSL can add CAs to a live context, not remove them).
    """

    def __init__(self, path: str | os.PathLike[str], *, check_interval: float = CHECK_INTERVAL_SECONDS) -> None:
        self._path = Path(path)
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._config = load_web_config(self._path)
        self._stamp = self._stamp_of(self._config)
        self._checked_at = time.monotonic()
        self._ssl: ssl.SSLContext | None = None
        if self._config.tls is not None:
            self._ssl = build_ssl_context(self._config.tls)
            # OpenSSL calls this for every handshake (with server_name None when the client sent
            # no SNI): a cheap hook to notice rotated certificates without waiting for a request.
            self._ssl.sni_callback = self._on_handshake
        self.last_error = ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's SSLContext (the same object for the process's lifetime), or None for plain HTTP."""
        return self._ssl

    def current(self) -> WebConfig:
        """The config in force, after a rate-limited check for changes on disk."""
        now = time.monotonic()
        if now - self._checked_at >= self._check_interval:
            self.reload_if_changed()
        return self._config

    def reload_if_changed(self) -> bool:
        """Check the files now; return True when a new config was taken."""
        with self._lock:
            self._checked_at = time.monotonic()
            stamp = self._stamp_of(self._config)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                config = load_web_config(self._path)
                self._take(config)
            except WebConfigInvalid as exc:
                self.last_error = str(exc)
                log.error("%s; keeping the previous web config", exc)
                return False
            self._stamp = self._stamp_of(config)
            self.last_error = ""
            log.info("web config %s reloaded", self._path)
            return True

    def _take(self, config: WebConfig) -> None:
        old_tls = self._config.tls
        if (old_tls is None) != (config.tls is None):
            raise WebConfigInvalid(
                f"web config {self._path}: tls_server_config was {'removed' if config.tls is None else 'added'}; "
                "switching between HTTP and HTTPS needs a restart"
            )
        if config.tls is not None and self._ssl is not None:
            if old_tls is not None and old_tls.client_ca_file and old_tls.client_ca_file != config.tls.client_ca_file:
                log.warning("client_ca_file changed: the new CA is trusted now, the old one until restart")
            _apply_tls(self._ssl, config.tls)
        self._config = config

    def _stamp_of(self, config: WebConfig) -> _Stamp:
        files = (self._path,) + (config.tls.files if config.tls is not None else ())
        return _stamp(files)

    def _on_handshake(self, _obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        self.current()  # never raises for a bad file: reload_if_changed logs it and keeps the old config


# --- basic auth ----------------------------------------------------------------------------------


MAX_PENDING_CHECKS = 16
# bcrypt uses only the first 72 bytes of a password, as htpasswd and Go's bcrypt do when they
# compare; the Python package (since 5.0) raises instead, so longer passwords are cut here.
BCRYPT_MAX_PASSWORD_BYTES = 72


class AuthBusy(Exception):
    """Too many password checks are queued; the request should be answered 503 and retried."""


class BasicAuthChecker:
    """Checks `Authorization: Basic` headers against bcrypt hashes.

    A bcrypt check at cost 10 takes about 70 ms, so successful checks are remembered, keyed by
    user, hash and the SHA-256 of the password (the password itself is never stored). Unknown
    users are checked against a dummy hash at the slowest configured cost, so a name that does
    not exist takes as long as the slowest user's wrong password.

    The bcrypt work runs on one thread of its own, never on the event loop's default executor
    or a pool a source uses: a flood of wrong passwords must not delay a device poll. At most
    `max_pending` checks wait for that thread; past that, `check` raises AuthBusy. A client
    whose password was already accepted is answered from the cache without waiting.
    """

    def __init__(self, max_cached: int = 256, max_pending: int = MAX_PENDING_CHECKS) -> None:
        self._max_cached = max_cached
        self._max_pending = max_pending
        self._pending = 0
        self._good: set[tuple[str, str, bytes]] = set()
        self._dummy: dict[int, bytes] = {}  # cost -> hash; touched only on the bcrypt thread
        self._executor: SerialDaemonExecutor | None = None

    async def check(self, header: str | None, users: Mapping[str, str]) -> str | None:
        """The authenticated user name, or None when the header is missing, malformed or wrong.

        Raises AuthBusy when `max_pending` checks are already waiting.
        """
        credentials = parse_basic_auth(header)
        if credentials is None:
            return None
        user, password = credentials
        stored = _lookup(users, user)
        digest = hashlib.sha256(password).digest()
        if stored is not None and (user, stored, digest) in self._good:
            return user
        if self._pending >= self._max_pending:
            raise AuthBusy()
        if self._executor is None:
            self._executor = SerialDaemonExecutor("bcrypt")
        self._pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._verify, password, stored, _slowest_cost(users.values())
            )
        finally:
            self._pending -= 1
        if not ok or stored is None:
            return None
        if len(self._good) >= self._max_cached:
            self._good.clear()
        self._good.add((user, stored, digest))
        return user

    def _verify(self, password: bytes, stored: str | None, dummy_cost: int) -> bool:
        """On the bcrypt thread: check `password` against `stored`, or burn the same time on a dummy."""
        target = stored.encode() if stored is not None else self._dummy_hash(dummy_cost)
        return _bcrypt_ok(password, target)

    def _dummy_hash(self, rounds: int) -> bytes:
        if rounds not in self._dummy:
            import bcrypt  # only hosts with basic auth need the package

            self._dummy[rounds] = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))
        return self._dummy[rounds]


def _slowest_cost(hashes: Iterable[str]) -> int:
    costs = [int(match.group(1)) for match in map(_BCRYPT_RE.match, hashes) if match]
    return max(costs, default=10)


def _lookup(users: Mapping[str, str], user: str) -> str | None:
    # Compare every name in constant time, so the answer's timing does not reveal which names exist.
    found: str | None = None
    for name, hashed in users.items():
        if hmac.compare_digest(name.encode(), user.encode()):
            found = hashed
    return found


def _bcrypt_ok(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only hosts with basic auth need the package

    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], hashed)
    except ValueError:
        return False


def parse_basic_auth(header: str | None) -> tuple[str, bytes] | None:
    """(user, password bytes) from an `Authorization: Basic …` value; None when absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


# --- aiohttp -------------------------------------------------------------------------------------


def make_auth_middleware(watcher: WebConfigWatcher) -> Middleware:
    """An aiohttp middleware enforcing `basic_auth_users` on every path and adding the configured headers.

    Every path is protected, as in node_exporter: a probe that cannot authenticate should use
    a TCP check. Failures get 401 with `WWW-Authenticate: Basic realm="accel-cost-exporter"`;
    past MAX_PENDING_CHECKS queued password checks, 503 with `Retry-After: 1`.
    """
    checker = BasicAuthChecker()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        config = watcher.current()
        if config.basic_auth_users:
            try:
                user = await checker.check(request.headers.get("Authorization"), config.users)
            except AuthBusy:
                busy = web.Response(
                    status=503, text="Too many password checks at once; retry\n", headers={"Retry-After": "1"}
                )
                _add_headers(busy, config)
                return busy
            if user is None:
                denied = web.Response(
                    status=401,
                    text="Unauthorized\n",
                    headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
                )
                _add_headers(denied, config)
                return denied
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _add_headers(exc, config)
            raise
        _add_headers(response, config)
        return response

    return middleware


def _add_headers(response: web.StreamResponse, config: WebConfig) -> None:
    if response.prepared:
        return  # a streamed response has sent its headers already
    for name, value in config.headers:
        response.headers[name] = value
