"""The `report` subcommand's flags, checked into frozen Options before anything runs."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from exporter.report.errors import ReportUsageError

T = TypeVar("T")
FORMATS = ("markdown", "json", "csv", "html")
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# A label matcher list as it goes between braces: name op "value", comma-separated.
_MATCHER = re.compile(r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*')


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the Prometheus HTTP API."""

    url: str
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 120.0
    concurrency: int = 4


@dataclass(frozen=True)
class ReportOptions:
    """Everything one report run needs, checked."""

    client: ClientOptions
    range_seconds: float
    end: float
    selector: str
    output_format: str
    output: str | None
    quiet: bool
    aws_regions: tuple[str, ...]
    aws_endpoint_url: str | None


def parse_duration(text: str) -> float:
    """A Prometheus duration (`7d`, `1h30m`, `90s`) in seconds; ValueError otherwise."""
    stripped = text.strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(stripped):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not stripped or pos != len(stripped) or total <= 0:
        raise ValueError(f"{text!r} is not a Prometheus duration: use e.g. 7d, 24h, 1h30m, 90s")
    return total


def parse_time(text: str) -> float:
    """RFC 3339 (`2026-01-31T00:00:00Z`) or Unix seconds, as Unix seconds; ValueError otherwise."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither RFC 3339 (2026-01-31T00:00:00Z) nor Unix seconds") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset such as +00:00")
    return parsed.timestamp()


def check_selector(text: str) -> str:
    """A label matcher list such as `job="accel",cluster=~"eu-.*"` (without braces)."""
    stripped = text.strip().removeprefix("{").removesuffix("}")
    if stripped and not all(_MATCHER.fullmatch(part) for part in _split_matchers(stripped)):
        raise ValueError(f'{text!r} is not a label matcher list: use e.g. job="accel" or job="accel",cluster=~"eu-.*"')
    return stripped.strip()


def _split_matchers(text: str) -> list[str]:
    # Split on commas outside quoted values.
    parts, current, quoted, escaped = [], "", False, False
    for char in text:
        if char == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    parts.append(current)
    return parts


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
        raise ValueError(f"{text!r} is not a header: use 'Name: value', e.g. 'X-Scope-OrgID: team-a'")
    return name.strip(), value.strip()


def _readable_file(text: str) -> str:
    if not Path(text).is_file():
        raise ValueError(f"{text!r} is not a readable file")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ReportUsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The `report` subcommand's parser."""
    p = _Parser(
        prog="accel-cost-exporter report",
        description="Fleet waste audit and rightsizing report from a Prometheus-compatible query API.",
    )
    p.add_argument("--prometheus.url", dest="url", required=True, help="base URL of the query API")
    p.add_argument("--range", dest="range", default="7d", help="how far back from --end (Prometheus duration)")
    p.add_argument("--end", dest="end", help="end of the range: RFC 3339 or Unix seconds (default now)")
    p.add_argument("--format", dest="format", default="markdown", choices=FORMATS)
    p.add_argument("--output", dest="output", help="write the report here instead of stdout")
    p.add_argument("--selector", dest="selector", default="", help='label matchers narrowing the fleet: job="accel"')
    p.add_argument("--prometheus.bearer-token-file", dest="token_file", help="file holding a bearer token")
    p.add_argument("--prometheus.basic-auth-user", dest="basic_user", help="basic auth user name")
    p.add_argument("--prometheus.basic-auth-password-file", dest="basic_password_file", help="basic auth password")
    p.add_argument("--prometheus.ca-file", dest="ca_file", help="CA bundle that signs the server's certificate")
    p.add_argument("--prometheus.cert-file", dest="cert_file", help="client certificate (mTLS)")
    p.add_argument("--prometheus.key-file", dest="key_file", help="client certificate's key (mTLS)")
    p.add_argument(
        "--prometheus.header",
        dest="headers",
        action="append",
        default=[],
        help="extra request header 'Name: value', repeatable (e.g. 'X-Scope-OrgID: team-a')",
    )
    p.add_argument("--prometheus.timeout", dest="timeout", default="2m", help="per-query timeout (duration)")
    p.add_argument("--prometheus.concurrency", dest="concurrency", type=int, default=4, help="queries in flight")
    p.add_argument("--aws.regions", dest="aws_regions", default="", help="comma-separated regions to list")
    p.add_argument("--aws.endpoint-url", dest="aws_endpoint", help="EC2 endpoint override (tests, VPC endpoints)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def _checked(flag: str, check: Callable[[str], T], value: str) -> T:
    try:
        return check(value)
    except ValueError as exc:
        raise ReportUsageError(f"{flag}: {exc}") from None


def parse_options(argv: Sequence[str], now: float | None = None) -> ReportOptions:
    """Parse and check the flags; ReportUsageError names the bad one."""
    args = build_parser().parse_args(list(argv))
    url = args.url.strip().rstrip("/")
    if not re.match(r"https?://[^/]+", url):
        raise ReportUsageError(f"--prometheus.url: {args.url!r} is not an http(s) URL: use e.g. http://prometheus:9090")
    if args.basic_password_file and not args.basic_user:
        raise ReportUsageError("--prometheus.basic-auth-password-file needs --prometheus.basic-auth-user")
    if bool(args.cert_file) != bool(args.key_file):
        raise ReportUsageError("--prometheus.cert-file and --prometheus.key-file go together")
    if args.concurrency < 1:
        raise ReportUsageError("--prometheus.concurrency: must be at least 1")
    for flag, path in (
        ("--prometheus.bearer-token-file", args.token_file),
        ("--prometheus.basic-auth-password-file", args.basic_password_file),
        ("--prometheus.ca-file", args.ca_file),
        ("--prometheus.cert-file", args.cert_file),
        ("--prometheus.key-file", args.key_file),
    ):
        if path:
            _checked(flag, _readable_file, path)
    regions = tuple(r.strip() for r in args.aws_regions.split(",") if r.strip())
    for region in regions:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
            raise ReportUsageError(f"--aws.regions: {region!r} is not a region name such as us-east-1")
    client = ClientOptions(
        url=url,
        bearer_token_file=args.token_file,
        basic_auth_user=args.basic_user,
        basic_auth_password_file=args.basic_password_file,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        headers=tuple(_checked("--prometheus.header", _header, h) for h in args.headers),
        timeout=_checked("--prometheus.timeout", parse_duration, args.timeout),
        concurrency=args.concurrency,
    )
    end = _checked("--end", parse_time, args.end) if args.end is not None else time.time() if now is None else now
    return ReportOptions(
        client=client,
        range_seconds=_checked("--range", parse_duration, args.range),
        end=end,
        selector=_checked("--selector", check_selector, args.selector),
        output_format=args.format,
        output=args.output,
        quiet=args.quiet,
        aws_regions=regions,
        aws_endpoint_url=args.aws_endpoint,
    )
