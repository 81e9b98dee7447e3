"""A flood of wrong passwords must not starve the Neuron source (issue 13, item 3)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from conftest import start_exporter

CLIENTS = 200
FLOOD_SECONDS = 8.0  # several times the 3 polls after which a stuck source's cores show down
PASSWORD = "scrape-me"
CORES = 32  # trn1.32xlarge
BUSY_CORE = "neuroncore0"  # the training job's: 92 % busy, 40 % for 5 s a minute


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _samples(text: str, metric: str) -> dict[str, float]:
    """`metric`'s samples by their label text."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"{metric}\{{(.*)\}} (\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


async def _scrape(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, headers={"Authorization": _basic("prometheus", PASSWORD)}) as response:
        body = await response.text()
        assert response.status == 200, body
        return body


async def _all_cores_reported(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as response:
            text = await response.text()
    except aiohttp.ClientConnectorError:
        return False  # not listening yet
    up = _samples(text, "accel_device_up")
    return response.status == 200 and sum(1 for labels in up if "neuroncore" in labels) == CORES


async def _flood(url: str, stop: asyncio.Event, answers: dict[int, int]) -> None:
    async def client(session: aiohttp.ClientSession, n: int) -> None:
        header = {"Authorization": _basic("prometheus", f"wrong-{n}")}
        while not stop.is_set():
            try:
                async with session.get(url, headers=header) as response:
                    await response.read()
                    answers[response.status] = answers.get(response.status, 0) + 1
            except aiohttp.ClientError:
                answers[0] = answers.get(0, 0) + 1

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, n) for n in range(CLIENTS)))


async def _scrape_through_flood(url: str) -> tuple[list[str], dict[int, int], float]:
    answers: dict[int, int] = {}
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as prometheus:
        first = await _scrape(prometheus, url)  # caches the right password, as Prometheus' first scrape does
        flood = asyncio.create_task(_flood(url, stop, answers))
        started = time.monotonic()
        scrapes = [first]
        while time.monotonic() - started < FLOOD_SECONDS:
            await asyncio.wait({flood}, timeout=0.5)  # a scrape interval; the flood runs meanwhile
            scrapes.append(await _scrape(prometheus, url))
        stop.set()
        await flood
        return scrapes, answers, time.monotonic() - started


@pytest.mark.asyncio
async def test_wrong_password_flood_leaves_every_neuroncore_up_and_busy_time_charged(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web_config = tmp_path / "web.yml"
    web_config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exporter = start_exporter(
        ["--demo", "trn1-training", "--collector.interval", "1s", "--web.config.file", str(web_config)],
        tmp_path / "exporter.log",
        wait=False,  # conftest's readiness probe has no password
    )
    url = f"{exporter.url}/metrics"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": _basic("prometheus", PASSWORD)}) as session:
            deadline = time.monotonic() + 30
            while not await _all_cores_reported(session, url):
                assert time.monotonic() < deadline and exporter.proc.poll() is None, exporter.log()
                await asyncio.sleep(0.1)
        scrapes, answers, seconds = await _scrape_through_flood(url)
    finally:
        exporter.stop(timeout=10)
    print(f"{CLIENTS} clients, {seconds:.1f} s: answers by status {answers}, {len(scrapes)} scrapes")
    assert answers.get(401, 0) > 0  # the flood really ran bcrypt checks ...
    assert sum(answers.values()) > CLIENTS  # ... from every client
    for text in scrapes:
        up = {labels: value for labels, value in _samples(text, "accel_device_up").items() if "neuroncore" in labels}
        assert len(up) == CORES and set(up.values()) == {1.0}, up
    busy_label = f'device="{BUSY_CORE}"'
    first, last = scrapes[0], scrapes[-1]
    busy = (
        _samples(last, "accel_busy_seconds_total")[busy_label] - _samples(first, "accel_busy_seconds_total")[busy_label]
    )
    idle_before = {k: v for k, v in _samples(first, "accel_state_seconds_total").items() if busy_label in k}
    idle_after = {k: v for k, v in _samples(last, "accel_state_seconds_total").items() if busy_label in k}
    for labels, value in idle_after.items():
        if 'state="idle' in labels:
            assert value == idle_before[labels], labels  # the busy core was never charged as idle
    assert busy >= 0.4 * (seconds - 2.0)  # 92 % (40 % at worst) of the time, less a poll at each end
