"""The exporter's side of the Neuron parser child: send a line, await its record.

The child (neuron_parser_child) is started on the first line and kept for the next ones. When it
dies, hangs or answers nonsense, the line it held is lost (it may be the line that killed it),
the child is reaped and started again on a later line after an exponential backoff; until then
`parse` raises ParserUnavailable and the caller parses in its own process. The tracker and its
counters never live in the child, so a crash loses nothing but that one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time

from exporter.sources.neuron_parse import MonitorRecord
from exporter.sources.neuron_wire import HEADER, WireError, decode, payload_length
from exporter.sources.streams import text_lines

log = logging.getLogger(__name__)

CHILD_MODULE = "exporter.sources.neuron_parser_child"
# A line takes 20-30 ms to parse; a child silent this long is stuck, not busy.
DEFAULT_ANSWER_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 0.5
HEALTHY_AFTER_SECONDS = 60.0  # a child that lived this long resets the restart backoff


class ParserUnavailable(Exception):
    """No parser child right now (backing off after a crash, or it cannot start): parse in process."""


class ParserCrashed(ParserUnavailable):
    """The child died, hung or answered nonsense; the message says how.

    `line_lost` is True when it failed on this line (the line may be what killed it: never parse
    it again), False when it was found dead before the line was sent (parse that in process).
    """

    def __init__(self, message: str, *, line_lost: bool) -> None:
        super().__init__(message)
        self.line_lost = line_lost


def child_argv() -> list[str]:
    """The child's command line: this interpreter, the child module."""
    return [sys.executable, "-m", CHILD_MODULE]


class ParserChild:
    """A supervised parser child process, one line at a time."""

    def __init__(
        self,
        *,
        argv: list[str] | None = None,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        answer_timeout_seconds: float = DEFAULT_ANSWER_TIMEOUT_SECONDS,
    ) -> None:
        """The keyword arguments are the command and waits; tests change them."""
        self._argv = argv or child_argv()
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = max(backoff_max_seconds, backoff_initial_seconds)
        self._delay = backoff_initial_seconds
        self._answer_timeout = answer_timeout_seconds
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._retry_at = -float("inf")
        self._last_stderr = ""
        self._stderr_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pids: list[int] = []
        self._spawn_failures = 0
        self._dropped: list[asyncio.subprocess.Process] = []  # killed, for `stop` to reap

    @property
    def pids(self) -> tuple[int, ...]:
        """Pids of every child started, in order."""
        return tuple(self._pids)

    @property
    def pid(self) -> int | None:
        """The running child's pid, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def take_spawn_failures(self) -> int:
        """Failed starts since the last call."""
        failures, self._spawn_failures = self._spawn_failures, 0
        return failures

    async def parse(self, line: bytes) -> MonitorRecord:
        """The child's record for `line`.

        Raises ParseError for a bad line (as parse_line would), ParserCrashed when the child failed
        on this line (lost), ParserUnavailable when no child runs now (parse it in process).
        """
        async with self._lock:
            proc = self._proc
            if proc is not None and proc.returncode is not None:
                raise self._crashed(proc, "exited", line_lost=False)
            if proc is None:
                proc = await self._start()
            assert proc.stdin is not None and proc.stdout is not None
            answered = False
            try:
                kind, payload = await asyncio.wait_for(self._exchange(proc, line), self._answer_timeout)
                answered = True
            except asyncio.TimeoutError:
                raise self._crashed(proc, f"gave no answer within {self._answer_timeout:g}s") from None
            except (OSError, asyncio.IncompleteReadError):  # broken pipe, reset, EOF: it died
                raise self._crashed(proc, "died") from None
            except WireError as exc:
                raise self._crashed(proc, f"answered nonsense ({exc})") from None
            finally:
                if not answered and self._proc is proc:
                    # Cancelled mid-exchange: its next answer would be this line's; never reuse it.
                    self._discard(proc)
            try:
                return decode(kind, payload)
            except WireError as exc:
                raise self._crashed(proc, f"answered nonsense ({exc})") from None

    async def _exchange(self, proc: asyncio.subprocess.Process, line: bytes) -> tuple[int, bytes]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        await proc.stdin.drain()
        kind, length = payload_length(await proc.stdout.readexactly(HEADER.size))
        return kind, await proc.stdout.readexactly(length)

    async def _start(self) -> asyncio.subprocess.Process:
        if time.monotonic() < self._retry_at:
            raise ParserUnavailable("the parser child is restarting")
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the terminal is the exporter's to handle
            )
        except OSError as exc:
            self._spawn_failures += 1
            wait = self._back_off()
            log.warning(
                "cannot start the neuron line parser (%s): %s; parsing in process, retrying in %.1fs",
                " ".join(self._argv),
                exc.strerror or exc,
                wait,
            )
            raise ParserUnavailable(f"cannot start the parser child: {exc}") from None
        assert proc.stderr is not None
        self._proc = proc
        self._pids.append(proc.pid)
        self._started_at = time.monotonic()
        self._last_stderr = ""
        self._stderr_task = asyncio.create_task(self._drain_stderr(proc.stderr), name="neuron parser stderr")
        log.debug("started the neuron line parser (pid %d)", proc.pid)
        return proc

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        # The child writes here only when it fails (e.g. it cannot import); keep the last line for the log.
        async for text in text_lines(stream):
            self._last_stderr = text[:300]

    def _crashed(self, proc: asyncio.subprocess.Process, how: str, *, line_lost: bool = True) -> ParserCrashed:
        lived = time.monotonic() - self._started_at
        if lived >= HEALTHY_AFTER_SECONDS:
            self._delay = self._backoff_initial
        self._discard(proc)
        wait = self._back_off()
        status = f", status {proc.returncode}" if proc.returncode is not None else ""
        detail = f" (last stderr: {self._last_stderr})" if self._last_stderr else ""
        lost = "that line is lost, the next are" if line_lost else "lines are"
        return ParserCrashed(
            f"the neuron line parser (pid {proc.pid}{status}) {how} after {lived:.1f}s{detail}; "
            f"{lost} parsed in process until it restarts in {wait:.1f}s",
            line_lost=line_lost,
        )

    def _back_off(self) -> float:
        wait = self._delay * random.uniform(0.8, 1.2)
        self._retry_at = time.monotonic() + wait
        self._delay = min(self._delay * 2, self._backoff_max)
        return wait

    def _discard(self, proc: asyncio.subprocess.Process) -> None:
        """Forget the child and kill it; asyncio's child watcher reaps it, `stop` waits for that."""
        if self._proc is proc:
            self._proc = None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        self._dropped.append(proc)

    def kill(self) -> None:
        """Kill the running child now, without waiting (asyncio's child watcher reaps it)."""
        if self._proc is not None:
            self._discard(self._proc)

    async def stop(self) -> None:
        """End the child: close its stdin (it exits), kill it after STOP_TIMEOUT_SECONDS; reap every child."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                pass
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            self._dropped.append(proc)
        dropped, self._dropped = self._dropped, []
        for old in dropped:
            await old.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            self._stderr_task = None
