"""Connection limits for the HTTP listener: a header-read timeout and a cap that leaves room for scrapes.

aiohttp alone keeps a connection that never sends a request (or sends half a header) until its
keep-alive timer fires, and accepts connections until the process runs out of file
descriptors. Once `accept()` fails with EMFILE, asyncio stops accepting for a second at a time,
and a scrape waits behind connections that will never do anything.

`ConnectionGuard` wraps aiohttp's protocol factory. It counts open connections and, when a new
one would exceed the cap, closes an idle one to make room: first the connection that has gone
longest without sending a complete request, then one with half a request after a response,
then the longest-idle kept-alive one. A connection whose request is being handled is never
closed, and the new connection (most likely the next scrape) is kept. A connection that takes
longer than `header_timeout` to send its request headers is closed, whether it sent nothing
or half a header. Idle kept-alive connections are closed by aiohttp's keep-alive timer.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 10.0
# Prometheus keeps its connection between scrapes; above twice a 60 s scrape interval, one late
# or missed scrape does not cost it a new connection (and a TLS handshake).
IDLE_TIMEOUT_SECONDS = 150.0
MAX_CONNECTIONS = 4096
LISTEN_BACKLOG = 64  # asyncio accepts at most this many sockets at each wake-up
KERNEL_BACKLOG = 512  # the kernel's queue of connections waiting to be accepted
# Descriptors kept free of connections. asyncio accepts up to a backlog of sockets at each
# wake-up, and a socket reaches the guard (and an evicted one is closed) a few loop iterations
# later, so under a flood up to about three backlogs are open beyond the count; the exporter
# also needs descriptors of its own (files, the neuron-monitor pipes, cloud API clients).
RESERVED_FDS = 4 * LISTEN_BACKLOG + 64
MIN_CONNECTIONS = 16
SWEEP_SECONDS = 1.0
REPORT_SECONDS = 60.0  # at most one log line a minute about closed connections


def connection_cap(soft_fd_limit: int | None = None) -> int:
    """How many connections fit under the process's file-descriptor limit (RLIMIT_NOFILE soft)."""
    if soft_fd_limit is None:
        soft_fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_fd_limit == resource.RLIM_INFINITY or soft_fd_limit < 0:
        return MAX_CONNECTIONS
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, soft_fd_limit - RESERVED_FDS))


def new_guard() -> ConnectionGuard:
    """A guard capped to fit this process's file-descriptor limit; says so when the limit lowers the cap."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    cap = connection_cap(soft)
    if cap < MAX_CONNECTIONS:
        log.info(
            "at most %d HTTP connections (file descriptor limit %d); raise LimitNOFILE / ulimit -n for more", cap, soft
        )
    return ConnectionGuard(max_connections=cap)


class _Conn:
    """What the guard knows about one connection."""

    __slots__ = ("busy", "since", "transport")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.since = now  # when it connected, answered, or started sending its next request
        self.busy = 0  # requests being handled now


class ConnectionGuard:
    """A protocol factory around aiohttp's, enforcing the cap and the header timeout.

    Connections live in one of three queues, oldest first, or in none while a request is being
    handled: `_fresh` (no complete request yet), `_started` (answered before, now sending half a
    request) and `_kept` (answered, waiting for the next request).
    """

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory: Callable[[], asyncio.BaseProtocol] | None = None
        self.max_connections = max_connections
        self._header_timeout = header_timeout
        self._clock = clock
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self._fresh: OrderedDict[_Conn, None] = OrderedDict()
        self._started: OrderedDict[_Conn, None] = OrderedDict()
        self._kept: OrderedDict[_Conn, None] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None
        self.evicted = 0
        self.timed_out = 0
        self._reported = (0, 0)
        self._reported_at = clock()

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> None:
        """Guard the connections of `factory` (aiohttp's `Server`, once the runner is set up)."""
        self._factory = factory

    def __call__(self) -> asyncio.Protocol:
        assert self._factory is not None, "wrap() the protocol factory before listening"
        return _GuardedProtocol(self, self._factory())

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def start(self) -> None:
        """Start the once-a-second sweep for header timeouts (needs a running loop)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)

    def stop(self) -> None:
        """Stop the sweep."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- connection events -------------------------------------------------------------------
    def _opened(self, transport: asyncio.Transport) -> None:
        conn = _Conn(transport, self._clock())
        if len(self._conns) >= self.max_connections and not self._make_room():
            log.warning(
                "connection limit of %d reached and every connection is busy; refusing one", self.max_connections
            )
            transport.abort()
            return
        self._conns[transport] = conn
        self._fresh[conn] = None

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is not None:
            self._unqueue(conn)

    def _received(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is not None and conn in self._kept:
            # A kept-alive connection starts its next request: the header clock starts now.
            del self._kept[conn]
            conn.since = self._clock()
            self._started[conn] = None

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """A request on `transport` reached the application: the connection is busy, not idle."""
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy += 1
            self._unqueue(conn)

    def request_finished(self, transport: asyncio.BaseTransport | None) -> None:
        """The application answered the request on `transport`: the connection is idle again."""
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.busy -= 1
            if not conn.busy:
                conn.since = self._clock()
                self._kept[conn] = None

    # --- limits ----------------------------------------------------------------------------------
    def _unqueue(self, conn: _Conn) -> None:
        for queue in (self._fresh, self._started, self._kept):
            queue.pop(conn, None)

    def _make_room(self) -> bool:
        for queue in (self._fresh, self._started, self._kept):
            if queue:
                victim, _ = queue.popitem(last=False)
                self._conns.pop(victim.transport, None)
                victim.transport.abort()  # frees the descriptor now, whatever is left to write
                self.evicted += 1
                return True
        return False

    def _sweep(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self._sweep)
        self.expire()
        self.report_if_due()

    def report_if_due(self) -> bool:
        """Log, at most once per REPORT_SECONDS, how many connections were closed since the last report."""
        now = self._clock()
        evicted, timed_out = self.evicted - self._reported[0], self.timed_out - self._reported[1]
        if now - self._reported_at < REPORT_SECONDS or not (evicted or timed_out):
            return False
        log.warning(
            "closed %d idle connection(s) to stay under the cap of %d, and %d that sent no complete request "
            "within %.0f s, in the last %.0f s (a client flood, or too many scrapers for the fd limit)",
            evicted,
            self.max_connections,
            timed_out,
            self._header_timeout,
            now - self._reported_at,
        )
        self._reported, self._reported_at = (self.evicted, self.timed_out), now
        return True

    def expire(self) -> int:
        """Close the connections that have taken longer than the header timeout to send a request; return how many."""
        deadline = self._clock() - self._header_timeout
        closed = 0
        for queue in (self._fresh, self._started):
            # Oldest first: stop at the first connection still within its time.
            while queue:
                conn = next(iter(queue))
                if conn.since > deadline:
                    break
                del queue[conn]
                self._conns.pop(conn.transport, None)
                conn.transport.abort()
                closed += 1
        self.timed_out += closed
        return closed


class _GuardedProtocol(asyncio.Protocol):
    """Passes every event on to aiohttp's protocol and tells the guard about the connection."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self._guard = guard
        self._inner: Any = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._guard._opened(cast(asyncio.Transport, transport))
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._guard._received(self._transport)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard._closed(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def guard_middleware(guard: ConnectionGuard) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware that marks a connection busy while its request is being handled."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        guard.request_started(transport)
        try:
            return await handler(request)
        finally:
            guard.request_finished(transport)

    return middleware


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through `guard`, with the TLS handshake bounded like a header read."""

    def __init__(
        self, runner: web.BaseRunner, guard: ConnectionGuard, host: str | None, port: int, **kwargs: Any
    ) -> None:
        super().__init__(runner, host, port, backlog=LISTEN_BACKLOG, **kwargs)
        self._guard = guard

    async def start(self) -> None:
        """Listen (what TCPSite.start does, with the guard as the protocol factory)."""
        self._runner._reg_site(self)
        ssl_context: ssl.SSLContext | None = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            self._guard,
            self._host,
            self._port,
            ssl=ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=HEADER_TIMEOUT_SECONDS if ssl_context is not None else None,
        )
        sockets = self._server.sockets
        for listening in sockets:
            # A long kernel queue, so that a flood does not drop a scrape's SYN (a 1 s retransmit),
            # while asyncio takes at most LISTEN_BACKLOG of them at each wake-up.
            with listening.dup() as same:
                same.listen(KERNEL_BACKLOG)
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        self._guard.start()
