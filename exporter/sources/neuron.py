"""The Neuron source: runs neuron-monitor as a supervised subprocess and reads its JSON lines.

neuron-monitor is started by absolute path (it is not on PATH under systemd or in containers)
with a config file this module writes, and read line by line in a background task. Each line is
parsed (neuron_parse) in a parser child process (neuron_parser): a 1.5 MB line takes 20-30 ms,
most of it in json.loads, which holds the GIL, so a thread would still stall the event loop.
While that child restarts, lines are parsed on the source's own worker thread. Records are
folded into a CoreTracker (neuron_cores) on the event loop; `poll` hands out what accumulated
since the previous poll. The child is restarted with exponential backoff when it
exits or stalls, its stderr is drained into the debug log, and `stop` terminates, kills if
needed and reaps it, so no orphan or zombie is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from exporter.clock import Clock
from exporter.config.model import NeuronSettings
from exporter.readings import SourceReport
from exporter.sources.neuron_cores import MIN_PERIOD_SECONDS, CoreTracker
from exporter.sources.neuron_parse import MonitorRecord, ParseError, parse_line
from exporter.sources.neuron_parser import ParserChild, ParserCrashed, ParserUnavailable
from exporter.sources.procfs import ProcessFacts, ProcessFactsReader
from exporter.sources.streams import text_lines
from exporter.workers import SerialDaemonExecutor

log = logging.getLogger(__name__)

NAME = "neuron"
# A trn1n.32xlarge with 32 runtimes writes ~1.5 MB lines; asyncio's default limit is 64 KiB.
DEFAULT_LINE_LIMIT = 16 * 2**20
RUNTIME_GROUPS = ("neuroncore_counters", "memory_used", "execution_stats")
SYSTEM_GROUPS = ("neuron_hw_counters", "memory_info")
# SIGTERM -> SIGKILL wait on stop. The daemon gives every source's stop() 1.5 s
# (daemon.SHUTDOWN_GRACE_SECONDS); this leaves room to kill, reap and clean up inside it.
DEFAULT_STOP_TIMEOUT_SECONDS = 0.8
HEALTHY_AFTER_SECONDS = 60.0  # a run this long that produced records resets the restart backoff


def neuron_auto_enabled(settings: NeuronSettings) -> bool:
    """True when neuron-monitor exists at the configured path and is executable (for `auto` mode)."""
    path = settings.monitor_path
    return os.path.isabs(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def format_period(seconds: float) -> str:
    """neuron-monitor's period syntax: whole seconds as `5s`, anything finer in milliseconds."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def monitor_config(period_seconds: float) -> dict[str, object]:
    """The neuron-monitor config the exporter runs with.

    One root period for every group, so each line refreshes every group and no group's counts
    are read twice; no vCPU or host-CPU groups (they fail in containers and are node_exporter's job).
    """
    return {
        "period": format_period(period_seconds),
        "neuron_runtimes": [{"tag_filter": ".*", "metrics": [{"type": t} for t in RUNTIME_GROUPS]}],
        "system_metrics": [{"type": t} for t in SYSTEM_GROUPS],
    }


def not_found_message(path: str) -> str:
    """The one log line for a missing neuron-monitor."""
    return f"neuron-monitor not found at {path}; install aws-neuronx-tools or set --neuron.monitor-path"


class RateLimitedLog:
    """At most `burst` messages per `window` seconds; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, level: int, *, burst: int = 10, window: float = 60.0) -> None:
        self._logger = logger
        self._level = level
        self._burst = burst
        self._window = window
        self._window_start = -float("inf")
        self._sent = 0
        self._dropped = 0

    def __call__(self, message: str, *args: object) -> None:
        """Log `message % args` unless the window's budget is spent."""
        if not self._logger.isEnabledFor(self._level):
            return
        now = time.monotonic()
        if now - self._window_start >= self._window:
            if self._dropped:
                self._logger.log(self._level, "neuron-monitor: %d similar messages suppressed", self._dropped)
            self._window_start = now
            self._sent = 0
            self._dropped = 0
        if self._sent < self._burst:
            self._sent += 1
            self._logger.log(self._level, message, *args)
        else:
            self._dropped += 1


class NeuronSource:
    """AWS Inferentia/Trainium NeuronCores through a supervised neuron-monitor subprocess."""

    name = NAME

    def __init__(
        self,
        settings: NeuronSettings,
        clock: Clock,
        proc_reader: ProcessFactsReader,
        *,
        line_limit_bytes: int = DEFAULT_LINE_LIMIT,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        stall_timeout_seconds: float | None = None,
        stop_timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS,
        parse_in_child: bool = True,
    ) -> None:
        """The keyword arguments are limits and waits (tests shorten them) and where lines are parsed.

        `parse_in_child` False parses every line on the source's worker thread, as before the
        parser child (benchmarks compare the two).
        """
        self._settings = settings
        self._clock = clock
        self._proc_reader = proc_reader
        self._line_limit = line_limit_bytes
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = max(backoff_max_seconds, backoff_initial_seconds)
        period = settings.period_seconds
        # A healthy monitor writes a line every period; a few missed periods mean it is stuck.
        self._stall_timeout = stall_timeout_seconds if stall_timeout_seconds is not None else max(4 * period, 20.0)
        self._stale_after = max(3 * period, 2 * MIN_PERIOD_SECONDS) + 2.0
        self._stop_timeout = stop_timeout_seconds
        # The first record's capture lasts ~0.5-14 ms; half a period (at most 0.5 s) tells it apart
        # from a real one also when tests run neuron-monitor with sub-second periods.
        self._tracker = CoreTracker(socket.gethostname(), min_period=min(MIN_PERIOD_SECONDS, period / 2))
        self._errors: Counter[str] = Counter()
        self._config_dir: Path | None = None
        self._config_path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._missing = False
        self._missing_logged = False
        self._last_record_at: float | None = None
        self._last_exit = ""
        self._last_stderr = ""
        self._next_start_at: float | None = None
        self._restarts = 0
        self._delays: list[float] = []
        self._pids: list[int] = []
        self._records_this_run = 0
        self._debug_log = RateLimitedLog(log, logging.DEBUG)
        # Parsing and /proc reads, off the event loop. The source's own thread: the loop's default
        # executor serves others (request handling) and must not delay neuron polls or be delayed.
        self._worker: SerialDaemonExecutor | None = None
        self._parse_in_child = parse_in_child
        self._parser: ParserChild | None = None

    # --- introspection (tests, diagnostics) -----------------------------------------------

    @property
    def restarts(self) -> int:
        """How often the child exited or stalled and was restarted."""
        return self._restarts

    @property
    def restart_delays(self) -> tuple[float, ...]:
        """The backoff delays waited before each restart, in order."""
        return tuple(self._delays)

    @property
    def child_pids(self) -> tuple[int, ...]:
        """Pids of every neuron-monitor this source started, in order."""
        return tuple(self._pids)

    @property
    def records(self) -> int:
        """Lines parsed into records since the source was made."""
        return self._tracker.total_records

    @property
    def parser_pids(self) -> tuple[int, ...]:
        """Pids of every parser child this source started, in order."""
        return self._parser.pids if self._parser is not None else ()

    @property
    def config_path(self) -> Path | None:
        """The generated neuron-monitor config file, while running."""
        return self._config_path

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Write the config and start the supervisor task; never raises."""
        if self._task is not None:
            return
        self._stopping.clear()
        try:
            self._config_dir = Path(tempfile.mkdtemp(prefix="accel-neuron-"))
            self._config_path = self._config_dir / "neuron-monitor.json"
            self._config_path.write_text(json.dumps(monitor_config(self._settings.period_seconds)), encoding="utf-8")
        except OSError as exc:
            log.error("cannot write the neuron-monitor config file: %s", exc)
            self._errors["config"] += 1
            self._config_path = None
            return
        self._worker = SerialDaemonExecutor("neuron-parse")
        if self._parse_in_child:
            self._parser = ParserChild(
                backoff_initial_seconds=self._backoff_initial, backoff_max_seconds=self._backoff_max
            )
        self._task = asyncio.create_task(self._supervise(), name="neuron-monitor supervisor")

    async def stop(self) -> None:
        """Stop the supervisor, terminate the child (SIGKILL after `stop_timeout`), reap it, remove the config.

        If stop() is itself cancelled (the daemon's shutdown grace ran out), the child's process
        group is still killed and the config directory removed before the cancellation goes on.
        """
        self._stopping.set()
        task, self._task = self._task, None
        proc = self._proc
        try:
            if task is not None:
                # The supervisor first, so it cannot start another child; cancelling it ends (and
                # reaps) the child it is reading, in _run_once.
                task.cancel()
                await asyncio.wait({task})  # unlike `await task`, a cancellation of stop() is not swallowed
                if not task.cancelled() and task.exception() is not None:
                    log.error("neuron-monitor supervisor failed: %r", task.exception())
            # The supervisor may have been between spawn and bookkeeping when cancelled.
            for leftover in (proc, self._proc):
                if leftover is not None:
                    await self._terminate(leftover)
            if self._parser is not None:
                await self._parser.stop()
        finally:
            for leftover in (proc, self._proc):
                if leftover is not None and leftover.returncode is None:
                    # Synchronous, so it happens even when cancelled; asyncio's child watcher reaps it.
                    self._signal(leftover, signal.SIGKILL)
            self._proc = None
            parser, self._parser = self._parser, None
            if parser is not None:
                parser.kill()  # stopped above unless cancelled; synchronous, like the SIGKILL above
            worker, self._worker = self._worker, None
            if worker is not None:
                worker.shutdown(wait=False)  # a parse in flight finishes on its own; nothing waits for it
            if self._config_dir is not None:
                shutil.rmtree(self._config_dir, ignore_errors=True)
                self._config_dir = None
                self._config_path = None

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is None:
            self._signal(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self._stop_timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "neuron-monitor (pid %d) ignored SIGTERM for %.1fs; killing it", proc.pid, self._stop_timeout
                )
            finally:
                if proc.returncode is None:  # timed out, or cancelled while waiting
                    self._signal(proc, signal.SIGKILL)
        # wait() reaps the child: no zombie stays behind.
        await proc.wait()

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own session: signal the group so a wrapper's children go too.
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    # --- supervisor ---------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self._backoff_initial
        while not self._stopping.is_set():
            path = self._settings.monitor_path
            if not neuron_auto_enabled(self._settings):
                self._note_missing(path)
                # Look again now and then: the tools may be installed while the exporter runs.
                await self._sleep(self._backoff_max)
                continue
            self._missing = False
            started = time.monotonic()
            ran_ok = await self._run_once(path)
            if self._stopping.is_set():
                break
            if ran_ok and time.monotonic() - started >= HEALTHY_AFTER_SECONDS:
                delay = self._backoff_initial
            wait = delay * random.uniform(0.8, 1.2)
            self._restarts += 1
            self._errors["restart"] += 1
            self._delays.append(wait)
            log.warning("%s; restarting in %.1fs", self._last_exit, wait)
            self._next_start_at = time.monotonic() + wait
            await self._sleep(wait)
            self._next_start_at = None
            delay = min(delay * 2, self._backoff_max)

    def _note_missing(self, path: str) -> None:
        self._missing = True
        if not self._missing_logged:
            self._missing_logged = True
            self._errors["not_found"] += 1
            if os.path.exists(path) and os.path.isabs(path):
                log.error(
                    "neuron-monitor at %s is not an executable file; fix its permissions or set --neuron.monitor-path",
                    path,
                )
            else:
                log.error("%s", not_found_message(path))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _run_once(self, path: str) -> bool:
        """Run one neuron-monitor until it exits or stalls; True when it produced records."""
        assert self._config_path is not None
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                "-c",
                str(self._config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=self._line_limit,
                start_new_session=True,
            )
        except OSError as exc:
            self._errors["spawn"] += 1
            self._last_exit = f"cannot start neuron-monitor at {path}: {exc.strerror or exc}"
            return False
        self._proc = proc
        self._pids.append(proc.pid)
        self._records_this_run = 0
        log.info("started neuron-monitor (pid %d): %s -c %s", proc.pid, path, self._config_path)
        assert proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(self._drain_stderr(proc.stderr), name="neuron-monitor stderr")
        stalled = False
        try:
            stalled = await self._read_stdout(proc.stdout)
            if not stalled and not self._stopping.is_set():
                # EOF on stdout: a monitor that closed it but lives on would be waited for forever.
                try:
                    await asyncio.wait_for(proc.wait(), self._stall_timeout)
                except asyncio.TimeoutError:
                    stalled = True
            if stalled and not self._stopping.is_set():
                self._errors["stall"] += 1
                await self._terminate(proc)
            await proc.wait()
            with contextlib.suppress(asyncio.CancelledError):
                await stderr_task
        finally:
            if not stderr_task.done():
                stderr_task.cancel()
            if proc.returncode is None:
                # Cancelled (stop) while reading: never leave the child running.
                await asyncio.shield(self._terminate(proc))
            self._proc = None
        how = (
            f"stalled (no line for {self._stall_timeout:.0f}s)" if stalled else f"exited with status {proc.returncode}"
        )
        detail = f" (last stderr: {self._last_stderr})" if self._last_stderr else ""
        self._last_exit = f"neuron-monitor (pid {proc.pid}) {how} after {self._records_this_run} records{detail}"
        return self._records_this_run > 0

    async def _read_stdout(self, stream: asyncio.StreamReader) -> bool:
        """Read lines until EOF (False) or a stall (True): no newline for `stall_timeout`."""
        while True:
            try:
                line = await asyncio.wait_for(stream.readuntil(b"\n"), self._stall_timeout)
            except asyncio.TimeoutError:
                return True
            except asyncio.IncompleteReadError as exc:
                await self._ingest(exc.partial)
                return False
            except asyncio.LimitOverrunError as exc:
                # readuntil leaves the data in the buffer; drop the line and carry on with the next.
                self._errors["oversize"] += 1
                self._debug_log("neuron-monitor line over %d bytes skipped", self._line_limit)
                ended = await self._skip_line(stream, exc.consumed)
                if ended is not None:
                    return ended
                continue
            await self._ingest(line)

    async def _skip_line(self, stream: asyncio.StreamReader, consumed: int) -> bool | None:
        """Discard up to and including the next newline.

        None when the line is gone and reading goes on; otherwise how the stream ended, as
        `_read_stdout` says it: True for a stall (no newline within `stall_timeout`, which the
        supervisor must answer with a restart, not by waiting for an exit), False for EOF.
        """
        try:
            await stream.readexactly(consumed)
            while True:
                try:
                    await asyncio.wait_for(stream.readuntil(b"\n"), self._stall_timeout)
                    return None
                except asyncio.LimitOverrunError as exc:
                    await stream.readexactly(exc.consumed)
        except asyncio.TimeoutError:
            return True
        except asyncio.IncompleteReadError:
            return False

    async def _ingest(self, line: bytes) -> None:
        if not line or line.isspace():  # isspace stops at the first byte of a real line; strip copies it
            return
        try:
            record = await self._parse(line)
            if record is None:
                return
        except ParseError as exc:
            self._errors["parse"] += 1
            self._debug_log("neuron-monitor line skipped (%d bytes): %s", len(line), exc)
            return
        for error in record.errors:
            self._errors["group_error"] += 1
            self._debug_log("neuron-monitor %s skipped: %s", error.where, error.message)
        unknown = self._tracker.ingest(record)
        if unknown:
            # Counted once per line: the period adds neither busy nor idle time to these cores.
            self._errors["unknown_busy"] += 1
            self._debug_log(
                "neuron-monitor line: busy time of %d cores unknown (%d unusable values, %d failed runtimes)",
                unknown,
                record.bad_values,
                len(record.failed_runtimes),
            )
        self._records_this_run += 1
        self._last_record_at = self._clock.monotonic()

    async def _parse(self, line: bytes) -> MonitorRecord | None:
        """The line's record (None: lost with a crashed parser child, counted); ParseError for a bad line."""
        # One line at a time, in order: the reader awaits each parse before reading on.
        parser = self._parser
        if parser is not None:
            try:
                return await parser.parse(line)
            except ParserCrashed as exc:
                self._errors["parser_crash"] += 1
                log.warning("%s", exc)
                if exc.line_lost:
                    return None
            except ParserUnavailable:
                self._errors["parser_spawn"] += parser.take_spawn_failures()
        worker = self._worker
        if worker is None:  # only while stop() is tearing down: not worth a failure
            return parse_line(line)
        return await asyncio.get_running_loop().run_in_executor(worker, parse_line, line)

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        # An undrained stderr pipe fills up and blocks the monitor.
        async for text in text_lines(stream):
            self._last_stderr = text[:300]
            self._debug_log("neuron-monitor stderr: %s", text[:1000])

    # --- poll -----------------------------------------------------------------------------------

    async def poll(self) -> SourceReport:
        """Every core since the previous poll; never raises."""
        started = self._clock.monotonic()
        try:
            failure = self._failure(started)
            if failure is not None:
                return failure  # before reading /proc: nothing of it would be reported
            # /proc reads and user-name lookups (NSS may ask LDAP/sssd) run on the source's worker
            # thread; the tracker itself is not thread-safe and stays on the event loop.
            pids = self._tracker.holder_pids()
            worker = self._worker
            read_ahead: Mapping[int, ProcessFacts | None] = {}
            if pids and worker is not None:
                read_ahead = await asyncio.get_running_loop().run_in_executor(
                    worker, _read_facts, self._proc_reader, pids
                )
            return SourceReport(
                collector=NAME,
                devices=self._tracker.readings(_ReadAhead(read_ahead, self._proc_reader)),
                success=True,
                duration_seconds=self._clock.monotonic() - started,
                timestamp=self._clock.time(),
                errors=self._take_errors(),
                host_hints=self._tracker.host_hints(),
            )
        except Exception as exc:  # a bug here must not take the daemon down
            log.exception("neuron source poll failed")
            self._errors["internal"] += 1
            return self._failed(started, f"internal error: {exc}")

    def _failure(self, started: float) -> SourceReport | None:
        """The failed report when there is nothing to report this poll, else None."""
        if self._missing:
            return self._failed(started, not_found_message(self._settings.monitor_path))
        if self._task is None:
            return self._failed(started, "the neuron source is not running")
        fresh = self._tracker.records_since_poll > 0
        alive = self._proc is not None and self._proc.returncode is None
        recent = self._last_record_at is not None and started - self._last_record_at <= self._stale_after
        if not self._tracker.inventory_known:
            if self._tracker.total_records:
                return self._failed(
                    started, "neuron-monitor reports no usable neuron_hardware_info (is the Neuron driver loaded?)"
                )
            return self._failed(started, self._down_message("waiting for neuron-monitor's first record"))
        if not (fresh or (alive and recent)):
            return self._failed(started, self._down_message("no record from neuron-monitor"))
        return None

    def _down_message(self, default: str) -> str:
        if self._next_start_at is not None:
            return f"{self._last_exit}; restarting in {max(0.0, self._next_start_at - time.monotonic()):.1f}s"
        if self._last_record_at is not None:
            return f"{default} for {self._clock.monotonic() - self._last_record_at:.1f}s"
        return default

    def _failed(self, started: float, message: str) -> SourceReport:
        return SourceReport(
            collector=NAME,
            devices=(),
            success=False,
            duration_seconds=self._clock.monotonic() - started,
            timestamp=self._clock.time(),
            errors=self._take_errors(),
            complete=False,
            host_hints=self._tracker.host_hints(),
            message=message,
        )

    def _take_errors(self) -> tuple[tuple[str, int], ...]:
        errors = tuple(sorted(self._errors.items()))
        self._errors.clear()
        return errors


def _read_facts(reader: ProcessFactsReader, pids: Iterable[int]) -> dict[int, ProcessFacts | None]:
    """Facts for each pid (blocking: /proc and the user database)."""
    return {pid: reader.facts(pid) for pid in pids}


class _ReadAhead:
    """A ProcessFactsReader over facts read ahead; a pid first seen since then is read directly."""

    def __init__(self, facts: Mapping[int, ProcessFacts | None], fallback: ProcessFactsReader) -> None:
        self._facts = facts
        self._fallback = fallback

    def facts(self, pid: int) -> ProcessFacts | None:
        """The pid's facts as read ahead, else from the fallback reader."""
        return self._facts[pid] if pid in self._facts else self._fallback.facts(pid)
