"""The aiohttp application: `/`, the telemetry path, `/-/healthy` and `/-/ready`."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from exporter import __version__
from exporter.exposition.render import RenderCache, Rendered

SERVER_HEADER = f"accel-cost-exporter/{__version__}"
Middleware = Callable[..., Any]


def _wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def _wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() in ("gzip", "*") and params.replace(" ", "") not in (
            "q=0",
            "q=0.0",
            "q=0.00",
            "q=0.000",
        ):
            return True
    return False


def build_app(
    cache: RenderCache,
    is_ready: Callable[[], bool],
    telemetry_path: str = "/metrics",
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The application; `cache` holds the rendered bytes, `is_ready` says whether a poll finished."""

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

    async def landing(request: web.Request) -> web.Response:
        path = html.escape(telemetry_path)
        page = (
            "<!DOCTYPE html><html><head><title>accel-cost-exporter</title></head><body>"
            "<h1>accel-cost-exporter</h1>"
            "<p>Live accelerator cost, idle spend and waste for Prometheus.</p>"
            f'<ul><li><a href="{path}">Metrics</a></li><li><a href="/-/healthy">Health</a></li>'
            f'<li><a href="/-/ready">Readiness</a></li></ul><p>Version {html.escape(__version__)}</p></body></html>'
        )
        return web.Response(text=page, content_type="text/html")

    async def healthy(request: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def ready(request: web.Request) -> web.Response:
        if is_ready():
            return web.Response(text="OK\n")
        return web.Response(status=503, text="not ready: the first poll has not finished\n")

    @web.middleware
    async def server_header(request: web.Request, handler: Callable[[web.Request], object]) -> web.StreamResponse:
        response = await handler(request)  # type: ignore[misc]
        assert isinstance(response, web.StreamResponse)
        response.headers["Server"] = SERVER_HEADER
        return response

    app = web.Application(middlewares=[server_header, *middlewares], client_max_size=64 * 1024)
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
