"""The aiohttp application: `/`, the telemetry path, `/-/healthy` and `/-/ready`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web, web_response

from exporter.exposition.render import RenderCache, Rendered
from exporter.web.landing import LandingPage, LandingSettings

SERVER_HEADER = "accel-cost-exporter"  # no versions: they help only someone looking for a known bug
Middleware = Callable[..., Any]


OPENMETRICS = "application/openmetrics-text"


def _weights(header: str) -> dict[str, float]:
    """Each listed token (a media range or a content coding, lower case) and its weight (RFC 9110 §12.4.2).

    A token listed twice keeps its highest weight (Prometheus lists OpenMetrics once per
    version); a weight that is not a number from 0 to 1 makes its element count as not
    acceptable rather than guessed at.
    """
    weights: dict[str, float] = {}
    for element in header.split(","):
        token, *params = (part.strip() for part in element.split(";"))
        if not token:
            continue
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0
                if not 0.0 <= weight <= 1.0:
                    weight = 0.0
        token = token.lower()
        weights[token] = max(weight, weights.get(token, 0.0))
    return weights


def _wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when the client names it with a weight above 0 and at least text/plain's."""
    weights = _weights(accept)
    openmetrics = weights.get(OPENMETRICS, 0.0)
    text = weights.get("text/plain", weights.get("text/*", weights.get("*/*", 0.0)))
    return openmetrics > 0.0 and openmetrics >= text


def _wants_gzip(accept_encoding: str) -> bool:
    """gzip when the client accepts it: named (or as x-gzip), else through `*`; q=0 means not acceptable."""
    weights = _weights(accept_encoding)
    for name in ("gzip", "x-gzip", "*"):
        if name in weights:
            return weights[name] > 0.0
    return False


def build_app(
    cache: RenderCache,
    is_ready: Callable[[], bool],
    telemetry_path: str = "/metrics",
    middlewares: Sequence[Middleware] = (),
    landing_settings: Callable[[], LandingSettings] | None = None,
) -> web.Application:
    """The application; `cache` holds the rendered bytes, `is_ready` says whether a poll finished.

    `landing_settings` gives the landing page what is not in the snapshot (the waste target
    may change on a config reload); by default the telemetry path and the default target.
    """

    async def metrics(request: web.Request) -> web.Response:
        # Only the format and encoding asked for are rendered (once per snapshot).
        rendered: Rendered | None = await cache.get(
            openmetrics=_wants_openmetrics(request.headers.get("Accept", "")),
            gzipped=_wants_gzip(request.headers.get("Accept-Encoding", "")),
        )
        if rendered is None:
            return web.Response(status=503, text="no data yet: the first poll has not finished\n")
        headers = {"Content-Type": rendered.content_type, "Vary": "Accept, Accept-Encoding"}
        if rendered.gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=rendered.body, headers=headers)

    page = LandingPage(
        lambda: cache.latest, landing_settings or (lambda: LandingSettings(telemetry_path=telemetry_path))
    )

    async def landing(request: web.Request) -> web.Response:
        # Rendered at most once per snapshot; the same bytes for every visitor until the next poll.
        return web.Response(body=page.body(), content_type="text/html", charset="utf-8")

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="OK\n")
        return web.Response(status=503, text="not ready: the first poll has not finished\n")

    async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
        # Every response the application prepares, errors included (aiohttp's 404 and 405 are
        # raised past middlewares and would otherwise carry its default "Python/3.x aiohttp/3.x").
        response.headers["Server"] = SERVER_HEADER

    app = web.Application(middlewares=list(middlewares), client_max_size=64 * 1024)
    app.on_response_prepare.append(server_header)
    # aiohttp answers requests it cannot parse (400) before any application code runs, with
    # this module default as the Server header; without it those would name Python and aiohttp.
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # a module global, not exported
    app.router.add_get(telemetry_path, metrics)
    if telemetry_path != "/":
        app.router.add_get("/", landing)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app


def parse_listen_address(value: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); raises ValueError with the fix."""
    text = value.strip()
    host: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"expected [IPv6]:port, found {value!r}")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port or :port, found {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port from 0 to 65535 in {value!r}")
    return (host or None), int(port_text)
