"""A small client for the Prometheus HTTP query API (Prometheus, Thanos, Mimir, VictoriaMetrics).

Every failure becomes ReportFailed with one sentence naming the server, the query and the fix.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from exporter.report.args import ClientOptions
from exporter.report.errors import ReportFailed

# Prometheus refuses range queries of more than 11,000 points per series; stay below.
MAX_POINTS = 10_000


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class RangeSeries:
    """One series of a range query: (Unix time, value) points in time order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


def _ssl_context(options: ClientOptions) -> ssl.SSLContext | None:
    if not options.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.cert_file and options.key_file:
        context.load_cert_chain(options.cert_file, options.key_file)
    return context


def _read_secret(path: str, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFailed(f"cannot read {flag} {path}: {exc}") from None


def request_headers(options: ClientOptions) -> dict[str, str]:
    """Headers every query carries: the extra ones, then authorization."""
    headers = dict(options.headers)
    if options.bearer_token_file:
        headers["Authorization"] = "Bearer " + _read_secret(options.bearer_token_file, "--prometheus.bearer-token-file")
    return headers


class PromClient:
    """Runs queries with at most `concurrency` in flight; counts them for the progress line."""

    def __init__(self, options: ClientOptions, progress: Callable[[int, int], None] | None = None) -> None:
        self._options = options
        self._progress = progress
        self._limit = asyncio.Semaphore(options.concurrency)
        self._session: aiohttp.ClientSession | None = None
        self.started = 0
        self.done = 0
        self.expected = 0

    async def __aenter__(self) -> PromClient:
        auth = None
        if self._options.basic_auth_user:
            password = ""
            if self._options.basic_auth_password_file:
                password = _read_secret(self._options.basic_auth_password_file, "--prometheus.basic-auth-password-file")
            auth = aiohttp.BasicAuth(self._options.basic_auth_user, password)
        try:
            ssl_context = _ssl_context(self._options)
        except (OSError, ssl.SSLError) as exc:
            raise ReportFailed(f"cannot load the TLS files (--prometheus.ca-file/cert-file/key-file): {exc}") from None
        self._session = aiohttp.ClientSession(
            headers=request_headers(self._options),
            auth=auth,
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True),
            timeout=aiohttp.ClientTimeout(total=self._options.timeout + 5),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def instant(self, query: str, at: float) -> list[Sample]:
        """An instant query evaluated at `at`; the vector's samples."""
        data = await self._post("/api/v1/query", {"query": query, "time": _fmt(at)}, query)
        try:
            if data.get("resultType") == "scalar":
                return [Sample({}, _value(data["result"][1]))]
            return [Sample(item.get("metric", {}), _value(item["value"][1])) for item in data.get("result", [])]
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise ReportFailed(self._shape_error(query)) from None

    def _shape_error(self, query: str) -> str:
        return (
            f"{self._options.url} answered a result that is not a Prometheus vector or matrix "
            f"(is it the query API?); query: {_short(query)}"
        )

    async def range(self, query: str, start: float, end: float, step: float) -> list[RangeSeries]:
        """A range query, split into chunks of at most MAX_POINTS steps, merged back per series."""
        chunks = []
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + step * (MAX_POINTS - 1))
            chunks.append((chunk_start, chunk_end))
            chunk_start = chunk_end + step
        self.expected += len(chunks) - 1
        answers = await asyncio.gather(
            *(
                self._post(
                    "/api/v1/query_range",
                    {"query": query, "start": _fmt(s), "end": _fmt(e), "step": _fmt(step)},
                    query,
                )
                for s, e in chunks
            )
        )
        merged: dict[tuple[tuple[str, str], ...], tuple[Mapping[str, str], list[tuple[float, float]]]] = {}
        try:
            for data in answers:
                for item in data.get("result", []):
                    key = tuple(sorted(item.get("metric", {}).items()))
                    entry = merged.setdefault(key, (item.get("metric", {}), []))
                    entry[1].extend((float(t), _value(v)) for t, v in item.get("values", []))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise ReportFailed(self._shape_error(query)) from None
        return [RangeSeries(labels, tuple(sorted(points))) for labels, points in merged.values()]

    async def _post(self, path: str, form: dict[str, str], query: str) -> dict[str, Any]:
        assert self._session is not None, "use PromClient as an async context manager"
        form = {**form, "timeout": f"{int(self._options.timeout * 1000)}ms"}
        url = self._options.url + path
        async with self._limit:
            self.started += 1
            try:
                async with self._session.post(url, data=form) as response:
                    body = await response.read()
                    status = response.status
            except asyncio.TimeoutError:
                raise ReportFailed(
                    f"query timed out after {self._options.timeout:g} s at {self._options.url}: {_short(query)} "
                    "(raise --prometheus.timeout or shorten --range)"
                ) from None
            except aiohttp.ClientError as exc:
                raise ReportFailed(
                    f"cannot reach {self._options.url}: {exc} (check --prometheus.url and that the server is up)"
                ) from None
        answer = _decode(body)
        if status >= 400 or answer.get("status") != "success":
            raise ReportFailed(_failure(self._options.url, status, answer, body, query))
        self.done += 1
        if self._progress is not None:
            self._progress(self.done, max(self.expected, self.done))
        data = answer.get("data")
        return data if isinstance(data, dict) else {}


def _decode(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _failure(url: str, status: int, answer: dict[str, Any], body: bytes, query: str) -> str:
    detail = answer.get("error") or body[:200].decode("utf-8", "replace").strip() or "no body"
    kind = answer.get("errorType")
    hint = {
        401: "check --prometheus.bearer-token-file or the basic auth flags",
        403: "the credentials lack permission to query",
        404: "is --prometheus.url the API's base (e.g. http://prometheus:9090, or .../prometheus for Mimir)?",
        400: "the query or the --selector is not valid PromQL",
        422: "the server could not run the query",
        503: "the server is overloaded or starting",
    }.get(status, "see the server's log")
    if kind == "timeout":
        hint = "the server's query timed out: raise --prometheus.timeout or shorten --range"
    prefix = f"HTTP {status}" if status >= 400 else "an answer that is not a Prometheus API answer"
    return f"{url} returned {prefix}{f' ({kind})' if kind else ''}: {detail} — {hint}; query: {_short(query)}"


def _short(query: str) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= 160 else flat[:157] + "..."


def _value(text: Any) -> float:
    return float(text)


def _fmt(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")
