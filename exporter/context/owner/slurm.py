"""Slurm job facts from `scontrol show job <id> --json`: account, partition and user, cached per job.

The cgroup gives a process's job ID (see cgroup.py); the job's account and partition live in
slurmctld, and `scontrol` is the one client every Slurm host has. Its JSON (the `data_parser`
plugin, Slurm 23.02 and later) is a document with a top-level `jobs` list whose entries carry
`job_id`, `account`, `partition`, `user_name` and `job_state` (a string before data_parser
v0.0.40, a list of flags since).

`SlurmJobs.job(job_id)` never blocks: it answers from the cache and, on a miss or a stale entry,
queues a lookup for its worker threads (at most MAX_WORKERS). Each lookup is a subprocess in its own process group,
killed as a group when it outlives `attribution.slurm.timeout` (a hung slurmctld must not leave
scontrol and its children behind). A missing, failing, hanging or garbled scontrol is counted
under `accel_exporter_errors_total{collector="slurm"}`, logged once, and retried later; it is
never fatal and never blocks a poll or a scrape.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from exporter.clock import Clock
from exporter.config.model import SlurmSettings
from exporter.context.errors import ErrorCounts, LogOnce

log = logging.getLogger(__name__)

COLLECTOR = "slurm"
MAX_OUTPUT_BYTES = 4 * 1024 * 1024  # one job's JSON is a few kB; more is not scontrol's answer
MAX_PENDING = 1024  # job IDs queued for a lookup at most; more wait for the next poll to ask again
# Lookups at once: a node that starts eight jobs gets their accounts within one poll, and one
# hung slurmctld holds at most this many threads and scontrol processes.
MAX_WORKERS = 4
_JOB_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.+-]{0,63}$")
_STDERR_CHARS = 200


@dataclass(frozen=True)
class SlurmJob:
    """What slurmctld says about one job; a field is "" when the answer did not carry it."""

    job_id: str
    account: str = ""
    partition: str = ""
    user: str = ""
    state: str = ""


class SlurmLookupError(Exception):
    """A lookup failed; `reason` is the `accel_exporter_errors_total` reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def valid_job_id(job_id: str) -> bool:
    """Whether `job_id` may be handed to scontrol (no option-like or odd text from a mapping file)."""
    return bool(_JOB_ID.match(job_id))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _state(value: object) -> str:
    if isinstance(value, list):
        return ",".join(item for item in value if isinstance(item, str))
    return _text(value)


def _job_number(value: object) -> str:
    """`job_id` is a number; some versions wrap numbers as {"set": true, "number": N}."""
    if isinstance(value, dict):
        value = value.get("number")
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    return _text(value)


def parse_job_json(text: str, job_id: str) -> SlurmJob:
    """The job `job_id` from `scontrol show job <id> --json` output; raises SlurmLookupError."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise SlurmLookupError("garbage", "scontrol printed something that is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("jobs"), list):
        raise SlurmLookupError("garbage", "scontrol's JSON has no `jobs` list (Slurm 23.02 or later is needed)")
    for entry in document["jobs"]:
        if not isinstance(entry, dict):
            continue
        # An array task is listed under its own job ID; the cgroup names the same one.
        if _job_number(entry.get("job_id")) == job_id:
            return SlurmJob(
                job_id=job_id,
                account=_text(entry.get("account")),
                partition=_text(entry.get("partition")),
                user=_text(entry.get("user_name")),
                state=_state(entry.get("job_state")),
            )
    raise SlurmLookupError("unknown_job", f"slurmctld does not know job {job_id} (it may have ended)")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the lookup's process group (scontrol and anything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_scontrol(
    executable: str,
    job_id: str,
    timeout: float,
    started: Callable[[subprocess.Popen[bytes], bool], None] | None = None,
) -> str:
    """`scontrol show job <job_id> --json`'s output; raises SlurmLookupError on any failure.

    The child runs in a new session so a timeout kills it and its children at once: otherwise a
    grandchild still holding the output pipe would keep the read waiting. `started(child, running)`
    is told when the child starts and when it is done (so a shutdown can kill a lookup in flight).
    """
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                [executable, "show", "job", job_id, "--json"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
        except OSError as exc:
            raise SlurmLookupError("exec", f"cannot run {executable}: {exc.strerror or exc}") from None
        if started is not None:
            started(process, True)
        expired = threading.Event()

        def expire() -> None:
            if process.returncode is None:  # not once reaped: its group ID may belong to another by then
                expired.set()
                _kill_group(process)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            assert process.stdout is not None
            output = process.stdout.read(MAX_OUTPUT_BYTES + 1)
            if len(output) > MAX_OUTPUT_BYTES:
                _kill_group(process)
            status = process.wait()
        finally:
            timer.cancel()
            if process.stdout is not None:
                process.stdout.close()
            if started is not None:
                started(process, False)
        if expired.is_set():
            raise SlurmLookupError("timeout", f"scontrol gave no answer within {timeout:g}s")
        if len(output) > MAX_OUTPUT_BYTES:
            raise SlurmLookupError("oversized", f"scontrol printed over {MAX_OUTPUT_BYTES // 2**20} MiB")
        text = output.decode("utf-8", errors="replace")
        if status != 0:
            errors.seek(0)
            stderr = errors.read(_STDERR_CHARS).decode("utf-8", errors="replace").strip()
            if "invalid job id" in (text + stderr).lower():
                raise SlurmLookupError("unknown_job", f"slurmctld does not know job {job_id} (it may have ended)")
            raise SlurmLookupError("exit_status", f"scontrol exited with status {status}: {stderr or '(no message)'}")
        return text


Lookup = Callable[[str], SlurmJob]


@dataclass
class _Entry:
    job: SlurmJob | None  # None: the last lookup failed
    due: float  # monotonic time after which the job is asked again


class SlurmJobs:
    """A bounded, least-recently-used cache of Slurm jobs, filled by up to MAX_WORKERS worker threads.

    `lookup` is `scontrol` through `run_scontrol` unless a test or the simulator gives another
    callable with the same contract (returns the job or raises SlurmLookupError).
    """

    def __init__(
        self, settings: SlurmSettings, clock: Clock, lookup: Lookup | None = None, errors: ErrorCounts | None = None
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lookup = lookup or self._scontrol
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._workers = 0
        self._idle = 0  # workers waiting for a job
        self._in_flight: set[str] = set()  # job IDs the workers are looking up
        self._children: set[subprocess.Popen[bytes]] = set()  # their scontrol processes
        self._closed = False
        self._errors = errors if errors is not None else ErrorCounts()
        self._once = LogOnce(log)
        self._last_ok: bool | None = None  # None until a lookup has finished
        self._last_duration = 0.0
        self._last_success: float | None = None

    # --- the answering side (event loop, attribution threads) ---------------------------------

    def job(self, job_id: str) -> SlurmJob | None:
        """The cached job, or None while unknown; a miss or a stale entry queues a lookup."""
        if not job_id or not self.settings.scontrol or not valid_job_id(job_id):
            return None
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None:
                self._entries.move_to_end(job_id)
            if (entry is None or now >= entry.due) and not self._closed:
                self._queue(job_id)
            return entry.job if entry is not None else None

    def _queue(self, job_id: str) -> None:
        if job_id in self._pending or len(self._pending) >= MAX_PENDING:
            return
        self._pending[job_id] = None
        if self._idle < len(self._pending) and self._workers < MAX_WORKERS:
            self._workers += 1
            threading.Thread(target=self._work, name=f"slurm-lookup-{self._workers}", daemon=True).start()
        self._wake.notify_all()  # settle() waits on the same condition: wake the workers for sure

    def settle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds (blocking: call it off the event loop) until no job seen for
        the first time is still waiting for its lookup; True when none is.

        The first poll of a new job is then charged to its account rather than to the host's
        default: a job already cached, being refreshed, is not waited for.
        """
        with self._lock:
            return self._wake.wait_for(self._no_new_job_waiting, timeout)

    def _no_new_job_waiting(self) -> bool:
        """(Under the lock.) Every queued or in-flight job already has an entry, or the cache closed."""
        waiting = [*self._pending, *self._in_flight]
        return self._closed or all(job_id in self._entries for job_id in waiting)

    def errors(self) -> Mapping[tuple[str, str], int]:
        """Cumulative lookup errors by (collector, reason); collector is `slurm`."""
        return self._errors.snapshot()

    def status(self) -> tuple[bool, float, float | None] | None:
        """(last lookup succeeded, its duration, Unix time of the last success); None before any lookup."""
        with self._lock:
            if self._last_ok is None:
                return None
            return self._last_ok, self._last_duration, self._last_success

    def close(self) -> None:
        """Stop the worker, killing the scontrol in flight (if any); later misses queue nothing."""
        with self._lock:
            self._closed = True
            self._pending.clear()
            self._wake.notify_all()
            children = list(self._children)
        for child in children:
            if child.poll() is None:
                _kill_group(child)  # a hung scontrol must not outlive the exporter

    # --- the worker thread --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not self._pending and not self._closed:
                    self._wake.wait()
                self._idle -= 1
                if self._closed:
                    return
                job_id, _ = self._pending.popitem(last=False)
                self._in_flight.add(job_id)
            self._resolve(job_id)

    def _resolve(self, job_id: str) -> None:
        started = self._clock.monotonic()
        try:
            job: SlurmJob | None = self._lookup(job_id)
            ok = True
        except SlurmLookupError as exc:
            job, ok = None, exc.reason == "unknown_job"  # scontrol worked; the job has ended
            self._errors.add(COLLECTOR, exc.reason)
            self._once.log(
                f"slurm:{exc.reason}",
                logging.WARNING,
                "slurm job %s: %s; its account and partition stay unknown (retried in %gs)",
                job_id,
                exc,
                self.settings.retry_seconds,
            )
        except Exception:  # a bug in a lookup must not end the worker
            job, ok = None, False
            self._errors.add(COLLECTOR, "internal")
            log.exception("slurm job %s: lookup failed", job_id)
        now = self._clock.monotonic()
        with self._lock:
            interval = self.settings.refresh_seconds if job is not None else self.settings.retry_seconds
            previous = self._entries.get(job_id)
            if job is None and previous is not None and not ok:
                job = previous.job  # keep the last good answer through a transient failure
            self._entries[job_id] = _Entry(job, now + interval)
            self._entries.move_to_end(job_id)
            while len(self._entries) > self.settings.cache_entries:
                self._entries.popitem(last=False)
            self._last_ok = ok
            self._last_duration = max(0.0, now - started)
            if ok:
                self._last_success = self._clock.time()
            self._in_flight.discard(job_id)
            self._wake.notify_all()  # any settle() waiting

    def _scontrol(self, job_id: str) -> SlurmJob:
        name = self.settings.scontrol
        executable = name if name.startswith("/") else shutil.which(name)
        if executable is None or not os.access(executable, os.X_OK):
            raise SlurmLookupError(
                "missing",
                f"{name} not found (on PATH or not executable): set attribution.slurm.scontrol to its absolute path",
            )
        return parse_job_json(run_scontrol(executable, job_id, self.settings.timeout_seconds, self._track), job_id)

    def _track(self, child: subprocess.Popen[bytes], running: bool) -> None:
        with self._lock:
            if running:
                self._children.add(child)
            else:
                self._children.discard(child)
