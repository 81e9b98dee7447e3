"""The report's query client: range queries split where the server limits points, bounded
concurrency, and a malformed answer reported as one error."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from exporter.report.args import ClientOptions
from exporter.report.client import MAX_POINTS, PromClient
from exporter.report.errors import ReportFailed
from tests.fakes.server import serve


class MatrixApi:
    """Answers a range query with one series holding a point per step; refuses more than 11,000
    points as Prometheus does; counts requests and the most in flight at once."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.05)  # hold the request open so concurrent ones overlap
            if request.path.endswith("/query"):
                body = {
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]},
                }
                return web.json_response(body)
            start, end, step = float(form["start"]), float(form["end"]), float(form["step"])
            points = int((end - start) // step) + 1
            if points > 11_000:
                return web.json_response(
                    {"status": "error", "errorType": "bad_data", "error": "too many points"}, status=400
                )
            values = [[start + i * step, "1"] for i in range(points)]
            result = [{"metric": {"instance": "h1"}, "values": values}]
            return web.json_response({"status": "success", "data": {"resultType": "matrix", "result": result}})
        finally:
            self.in_flight -= 1

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app


def test_a_long_range_is_split_into_chunks_and_merged() -> None:
    api = MatrixApi()
    with serve(api.app()) as server:

        async def go() -> list[tuple[float, float]]:
            async with PromClient(ClientOptions(url=server.url, concurrency=2)) as client:
                series = await client.range("up", 0.0, 25_000 * 60.0, 60.0)
            assert len(series) == 1
            return list(series[0].points)

        points = asyncio.run(go())
    assert len(points) == 25_001
    assert [t for t, _ in points] == [i * 60.0 for i in range(25_001)]
    assert len(api.requests) == 3
    assert all((float(r["end"]) - float(r["start"])) / 60 + 1 <= MAX_POINTS for r in api.requests)
    assert api.most_in_flight <= 2


def test_concurrency_is_bounded() -> None:
    api = MatrixApi()
    with serve(api.app()) as server:

        async def go() -> None:
            async with PromClient(ClientOptions(url=server.url, concurrency=3)) as client:
                await asyncio.gather(
                    *(client.instant(f"q{i}", 0) for i in range(6)), *(client.range("up", 0, 600, 60) for _ in range(6))
                )

        asyncio.run(go())
    assert len(api.requests) == 12
    assert api.most_in_flight <= 3


def test_a_malformed_answer_is_one_error() -> None:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps({"status": "success", "data": {"result": [{"value": "x"}]}}))

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    with serve(app) as server:

        async def go() -> None:
            async with PromClient(ClientOptions(url=server.url)) as client:
                await client.instant("up", 0)

        with pytest.raises(ReportFailed, match="not a Prometheus vector"):
            asyncio.run(go())
