"""Idle, half-header and kept-alive connections must not lock scrapes out (issue 13, item 1)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ExporterProcess, start_exporter

from exporter.web.connections import RESERVED_FDS, ConnectionGuard, connection_cap

FD_LIMIT = 1024  # systemd's default soft limit
FLOOD = 1100  # connections of each kind: more than the limit on their own
CLIENT_FDS = 3 * FLOOD + 256


def _limit_fds() -> None:  # runs in the exporter child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def client_fds() -> Iterator[None]:
    """This test process needs a few thousand sockets of its own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CLIENT_FDS:
        pytest.skip(f"the hard file-descriptor limit ({hard}) is below the {CLIENT_FDS} sockets this test opens")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, CLIENT_FDS), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def limited_exporter(tmp_path: Path, client_fds: None) -> Iterator[ExporterProcess]:
    exporter = start_exporter(
        ["--demo", "p4d-idle-fleet", "--collector.interval", "1s"], tmp_path / "exporter.log", preexec_fn=_limit_fds
    )
    yield exporter
    exporter.stop(timeout=10)


class _Flood:
    """Opens connections; one that fails is allowed (the scrape is what matters), many in a row end the flood."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sockets: list[socket.socket] = []
        self.failures_in_a_row = 0

    def connect(self) -> socket.socket | None:
        if self.failures_in_a_row >= 3:
            return None  # the exporter no longer accepts (what happened before the fix): stop waiting
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.failures_in_a_row += 1
            return None
        self.failures_in_a_row = 0
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _send(sock: socket.socket | None, data: bytes) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # evicted already
            sock.sendall(data)


def _timed_scrape(port: int) -> float:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    conn.close()
    assert response.status == 200 and b"accel_device_up" in body
    return time.perf_counter() - started


def test_cap_leaves_room_under_the_fd_limit() -> None:
    assert connection_cap(1024) == 1024 - RESERVED_FDS
    assert connection_cap(65536) == 4096
    assert connection_cap(64) == 16


def test_floods_of_idle_half_header_and_kept_alive_connections_leave_scrapes_fast(
    limited_exporter: ExporterProcess,
) -> None:
    port = limited_exporter.port
    flood = _Flood(port)
    try:
        for _ in range(FLOOD):
            flood.connect()  # sends nothing
        for _ in range(FLOOD):
            _send(flood.connect(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a header
        kept = [flood.connect() for _ in range(FLOOD)]
        for sock in kept:
            _send(sock, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then kept alive
        for sock in kept:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.recv(4096)  # the exporter has handled the flood once this returns
        seconds = _timed_scrape(port)
        print(f"scrape after {3 * FLOOD} connections at ulimit -n {FD_LIMIT}: {seconds:.3f}s")
        assert seconds < 1.0
    finally:
        flood.close()
    assert "out of system resource" not in limited_exporter.log()


class FakeTransport(asyncio.Transport):
    """Only what the guard uses: abort()."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _guard(max_connections: int = 100) -> tuple[ConnectionGuard, Clock]:
    clock = Clock()
    guard = ConnectionGuard(max_connections=max_connections, header_timeout=10.0, clock=clock)
    guard.wrap(asyncio.Protocol)  # stands in for aiohttp's protocol
    return guard, clock


def _open(guard: ConnectionGuard, name: str) -> FakeTransport:
    transport = FakeTransport(name)
    guard().connection_made(transport)
    return transport


def _answer(guard: ConnectionGuard, transport: FakeTransport) -> None:
    guard.request_started(transport)
    guard.request_finished(transport)


def test_at_the_cap_the_longest_silent_connection_goes_and_the_new_one_stays() -> None:
    guard, clock = _guard(max_connections=4)
    prometheus = _open(guard, "prometheus")
    _answer(guard, prometheus)  # kept alive between scrapes
    clock.now += 1
    busy = _open(guard, "busy")
    guard.request_started(busy)  # being answered: never closed to make room
    silent = _open(guard, "silent")
    clock.now += 1
    half = _open(guard, "half")  # a connection without a complete request, data or not
    scrape = _open(guard, "scrape")
    assert silent.aborted and not half.aborted and not scrape.aborted
    assert not prometheus.aborted and not busy.aborted
    late = _open(guard, "late")
    assert half.aborted and not scrape.aborted  # then the next-oldest without a request
    _answer(guard, scrape)
    _answer(guard, late)
    newest = _open(guard, "newest")
    assert prometheus.aborted and not newest.aborted  # then the longest idle kept-alive one
    assert guard.open_connections == 4 and guard.evicted == 3


def test_only_busy_connections_means_the_new_one_is_refused() -> None:
    guard, _ = _guard(max_connections=2)
    first, second = _open(guard, "a"), _open(guard, "b")
    guard.request_started(first)
    guard.request_started(second)
    third = _open(guard, "c")
    assert third.aborted and not first.aborted and not second.aborted


def test_header_timeout_closes_silent_and_half_sent_requests_but_not_idle_kept_alive_ones() -> None:
    guard, clock = _guard()
    silent = _open(guard, "silent")
    kept = _open(guard, "kept")
    _answer(guard, kept)
    again = _open(guard, "again")
    _answer(guard, again)
    clock.now += 5
    guard._received(again)  # `again` starts its next request but never finishes the header
    assert guard.expire() == 0
    clock.now += 5.5
    assert guard.expire() == 1 and silent.aborted  # 10.5 s without a request
    assert not again.aborted  # its header clock started 5.5 s ago
    clock.now += 5
    assert guard.expire() == 1 and again.aborted
    assert not kept.aborted  # idle kept-alive: aiohttp's keep-alive timer (150 s) closes those


def test_closed_connections_are_reported_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    guard, clock = _guard(max_connections=1)
    _open(guard, "a")
    _open(guard, "b")  # closes a
    clock.now += 30
    assert guard.report_if_due() is False  # not a minute yet
    clock.now += 31
    with caplog.at_level(logging.WARNING, logger="exporter.web.connections"):
        assert guard.report_if_due() is True
    assert "closed 1 idle connection(s) to stay under the cap of 1, and 0 that sent no complete request" in caplog.text
    clock.now += 61
    assert guard.report_if_due() is False  # nothing new to say
