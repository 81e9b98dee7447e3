"""The daemon: wires sources → accounting → exposition, serves HTTP, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from exporter.accounting.idle_clock import IdleClockFile, IdleMark
from exporter.accounting.ledger import Ledger
from exporter.clock import Clock, SystemClock
from exporter.config import Config, ConfigInvalid
from exporter.context.owner.attribution import attribute_ahead
from exporter.context.owner.slurm_host import SlurmHost
from exporter.context.provider import ContextProvider
from exporter.exposition.render import RenderCache
from exporter.readings import SourceReport
from exporter.reload import prepare_config
from exporter.sources.base import Source
from exporter.sources.registry import SOURCES, BuildContext, HostEnvironment, RealHost, SourceSpec, enabled_specs
from exporter.web.landing import LandingSettings
from exporter.web.server import build_app, parse_listen_address

log = logging.getLogger(__name__)

DEFAULT_PORT = 11094  # outside the 9100-9999 range allocated to other exporters
CONTEXT_REFRESH_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 1.5
STALLED_POLLS = 3  # cycles a stuck source's devices keep their last reading before showing down
WEDGED_STOP_SECONDS = 0.2
SLURM_SETTLE_SECONDS = 1.0  # a poll waits at most this long for the scontrol answers of jobs new to it
# Configuration sections a SIGHUP cannot apply besides the sources' own (see restart_sections): the
# pod-resources watcher is built once at start. Every other section takes effect on reload.
RESTART_SECTIONS = ("kubernetes",)


@dataclass(frozen=True)
class Options:
    """Command-line settings (the YAML file is `Config`)."""

    listen_addresses: tuple[str, ...] = (f":{DEFAULT_PORT}",)
    telemetry_path: str = "/metrics"
    web_config_file: str | None = None
    config_file: str | None = None
    interval: float = 5.0
    log_level: str = "info"
    log_format: str = "logfmt"
    demo: str | None = None  # a scenario to simulate (see host_environment)
    # --[no-]collector.<name> as given, by source name; a source not named here gets its default.
    collectors: Mapping[str, bool] = field(default_factory=dict)
    # Values of the sources' own flags (e.g. --neuron.monitor-path), by flag name.
    source_values: Mapping[str, str] = field(default_factory=dict)
    state_directory: str | None = None


class Daemon:
    """One exporter process."""

    def __init__(
        self,
        options: Options,
        config: Config,
        clock: Clock | None = None,
        environment: HostEnvironment | None = None,
        registry: tuple[SourceSpec, ...] = SOURCES,
    ) -> None:
        """`environment` defaults to the one `options.demo` names; `registry` to every built-in source."""
        self.options = options
        self.config = config
        self.environment = environment or host_environment(options.demo)
        self.registry = registry
        self._restart_sections = restart_sections(registry)
        self._built_with = {name: getattr(config, name) for name in self._restart_sections}  # in force until a restart
        self.clock = clock or SystemClock()
        self.cache = RenderCache()
        self.ledger = Ledger(config.accounting, config.attribution.max_label_values)
        self.sources: list[Source] = []
        self.provider: ContextProvider | None = None
        self._ready = False
        self._stop = asyncio.Event()
        self._pending: dict[str, asyncio.Task[SourceReport]] = {}
        self._runner: web.AppRunner | None = None
        self._guard: Any = None
        self._web_watcher: Any = None
        self._context_error_seen: dict[tuple[str, str], int] = {}
        self._slurm: SlurmHost | None = None
        self._slurm_error_seen: dict[tuple[str, str], int] = {}
        self._pods: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._stalled: dict[str, int] = {}
        self._idle_file: IdleClockFile | None = None

    # --- assembly ---------------------------------------------------------------------------
    def _build_sources(self) -> None:
        """Build every source the registry and the flags enable, on this host's hardware."""
        log.info("sources on %s", self.environment.description)
        values = dict(self.options.source_values)
        for spec in enabled_specs(self.registry, self.options.collectors):
            forced = self.options.collectors.get(spec.name) is True
            context = BuildContext(self.clock, self.config, values, forced)
            source = self.environment.build_source(spec, context)
            if source is not None:
                self.sources.append(source)

    # --- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        self._build_sources()
        self._start_idle_clock()
        self._start_kubernetes()  # before the provider, which takes its pod lookup
        self._start_slurm()  # before the provider, which takes its job lookup
        self.provider = self._new_provider(self.config)
        self.ledger.record_config_reload(True, self.clock.time())  # main() loaded and validated it
        self._publish()
        try:
            await self._serve()
        except OSError as exc:
            log.error("cannot listen on %s: %s", ", ".join(self.options.listen_addresses), exc.strerror or exc)
            await self._shutdown_sources()
            return 1
        await self._start_context()
        for source in self.sources:
            await source.start()
        self._drop_absent_sources()
        self._tasks += [
            asyncio.create_task(self._poll_loop(), name="poll"),
            asyncio.create_task(self._context_loop(), name="context"),
        ]
        await self._stop.wait()
        log.info("shutting down")
        tasks = [*self._tasks, *self._reloads]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._shutdown()
        return 0

    def _start_idle_clock(self) -> None:
        """Continue each device's idle clock from the state directory (and a simulated host's history)."""
        offset = self.clock.time() - self.clock.monotonic()
        past = self.environment.idle_history()
        if past:
            # A simulated host has a past the exporter never saw; without it the demo's abandoned
            # job would look idle for only as long as the demo has run. A state file, newer, wins.
            log.info(
                "idle clocks start from the simulated host's history (%d device(s) with last_active before the start)",
                len(past),
            )
            history = {uuid: IdleMark(at, "", at) for uuid, at in past.items()}
            self.ledger.restore_idle_clock(history, offset)
        directory = self.options.state_directory
        if not directory:
            log.info("no state directory (--state.directory): accel_idle_seconds starts from 0 at every restart")
            return
        self._idle_file = IdleClockFile(directory)
        self.ledger.restore_idle_clock(self._idle_file.load(self.clock.time()), offset)

    async def _save_idle_clock(self) -> None:
        """Persist every device's idle clock; at most one poll interval is lost on a crash."""
        if self._idle_file is None:
            return
        marks = self.ledger.idle_marks(self.clock.time() - self.clock.monotonic())
        if not await asyncio.to_thread(self._idle_file.save, marks):  # fsync must not stall scrapes
            self.ledger.count_error("exporter", "idle_clock_write")

    def _drop_absent_sources(self) -> None:
        """Drop a source that found no hardware beside one that did: it would fail for ever.

        On a Neuron host with no NVIDIA driver, an NVML collector left on only adds a failing
        collector; on a host where it is the only source it stays, so the missing driver is alerted.
        """
        for source in list(self.sources):
            spec = next((s for s in self.registry if s.name == source.name), None)
            if spec is None or spec.absent_after_start is None or spec.name in self.options.collectors:
                continue
            why = spec.absent_after_start(source)
            others = [s.name for s in self.sources if s is not source]
            if why is None or not others:
                continue
            log.info(
                "%s collector off: %s, where %s runs (use %s to force it on)",
                spec.name,
                why,
                ", ".join(others),
                spec.flag,
            )
            self.sources.remove(source)
            self._tasks.append(asyncio.create_task(source.stop(), name=f"{spec.name}-stop"))

    def _schedule_reload(self) -> None:
        """SIGHUP: reloads run one at a time, in order; their tasks are kept so errors are seen."""
        task = asyncio.create_task(self._reload_locked(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_locked(self) -> None:
        async with self._reload_lock:
            try:
                await self.reload()
            except Exception:
                log.exception("configuration reload failed; keeping the previous one")
                self.ledger.count_error("config", "reload_failed")
                self.ledger.record_config_reload(False, self.clock.time())

    async def _serve(self) -> None:
        from exporter.web.connections import IDLE_TIMEOUT_SECONDS, GuardedSite, guard_middleware, new_guard

        guard = self._guard = new_guard()
        middlewares: list[Any] = [guard_middleware(guard)]
        ssl_context = None
        if self.options.web_config_file:
            from exporter.web.webconfig import WebConfigWatcher, make_auth_middleware

            self._web_watcher = WebConfigWatcher(self.options.web_config_file)
            ssl_context = self._web_watcher.ssl_context()
            middlewares.append(make_auth_middleware(self._web_watcher))
        app = build_app(
            self.cache, lambda: self._ready, self.options.telemetry_path, middlewares, self._landing_settings
        )
        # Probes and scrapes must stay responsive while idle or slow clients hold connections.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
            keepalive_timeout=IDLE_TIMEOUT_SECONDS,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        guard.wrap(self._runner.server)
        for address in self.options.listen_addresses:
            host, port = parse_listen_address(address)
            site = GuardedSite(self._runner, guard, host, port, ssl_context=ssl_context, reuse_address=True)
            await site.start()
        log.info(
            "listening on %s%s (%s)",
            ", ".join(self.options.listen_addresses),
            self.options.telemetry_path,
            "https" if ssl_context else "http",
        )

    def _landing_settings(self) -> LandingSettings:
        """What the landing page needs from the configuration in force (it may change on a reload)."""
        return LandingSettings(self.options.telemetry_path, self.config.accounting.target_utilization)

    async def _start_context(self) -> None:
        assert self.provider is not None
        try:
            await self.provider.start()
        except Exception:
            log.exception("context provider failed to start; continuing without price or identity")
        self._record_context()

    def _new_provider(self, config: Config) -> ContextProvider:
        provider = ContextProvider(config, self.clock, self.environment, state_directory=self.options.state_directory)
        if self._pods is not None:
            pods = self._pods
            provider.set_pod_lookup(lambda facts: pods.assignments.for_cgroup(facts))
        if self._slurm is not None:
            provider.set_job_lookup(self._slurm.job)
        return provider

    def _start_kubernetes(self) -> None:
        """Pod attribution through the kubelet's pod-resources API, when on a Kubernetes node."""
        settings = self.config.kubernetes
        if settings.enabled is False or not self.environment.live:
            return
        try:
            from exporter.context.owner.kubernetes import PodResourcesWatcher, pods_for_device
        except ImportError as exc:  # grpcio is an optional dependency
            if settings.enabled:
                log.error(
                    "kubernetes.enabled is true but pod attribution cannot load (%s): install accel-cost-exporter[kubernetes]",
                    exc,
                )
            return
        watcher = PodResourcesWatcher(Path(settings.pod_resources_socket), refresh_seconds=settings.refresh_seconds)
        if settings.enabled is None and not watcher.enabled:
            return
        self._pods = watcher
        self._tasks.append(asyncio.create_task(watcher.run(), name="kubernetes"))
        self.ledger.set_device_pods(lambda identity: pods_for_device(watcher.assignments, identity))

    def _start_slurm(self) -> None:
        """Slurm job attribution: scontrol lookups on demand, and dcgm-exporter's job-mapping directory if set."""
        slurm = self._slurm = SlurmHost(self.environment.attribution_settings(self.config.attribution), self.clock)
        self.ledger.set_device_jobs(slurm.jobs_for_device)

    def _record_slurm(self) -> None:
        """The slurm collector's self-metrics, once a lookup has run (a host without Slurm shows none)."""
        if self._slurm is None:
            return
        status = self._slurm.status()
        if status is not None:
            ok, duration, last_success = status
            self.ledger.record_collector("slurm", ok, duration, last_success)
        self._count_new_errors(self._slurm.errors(), self._slurm_error_seen)

    def _count_new_errors(self, cumulative: Mapping[tuple[str, str], int], seen: dict[tuple[str, str], int]) -> None:
        """Add to the ledger what a cumulative error count gained since it was last seen."""
        for key, count in cumulative.items():
            if count > seen.get(key, 0):
                self.ledger.count_error(key[0], key[1], count - seen.get(key, 0))
                seen[key] = count

    def _record_context(self) -> None:
        assert self.provider is not None
        now = self.clock.time()
        known, duration = self.provider.status()
        self.ledger.record_collector("price", known, duration, now if known else None)
        ok, duration = self.provider.metadata_status()
        self.ledger.record_collector("metadata", ok, duration, now if ok else None)
        self._count_new_errors(self.provider.errors(), self._context_error_seen)  # cumulative: the ledger adds deltas
        if self._pods is not None:
            self.ledger.record_collector("kubernetes", not self._pods.last_error, 0.0, self._pods.last_success or None)

    async def _poll_loop(self) -> None:
        interval = self.options.interval
        next_tick = self.clock.monotonic()
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug hit by one poll must not silently end every later one
                log.exception("poll failed; the next one runs on schedule")
                self.ledger.count_error("exporter", "poll_failed")
            next_tick += interval
            now = self.clock.monotonic()
            if next_tick < now:
                # A slow cycle: skip the missed ticks rather than bursting to catch up.
                next_tick = now + interval - ((now - next_tick) % interval)
            await asyncio.sleep(next_tick - now)

    async def poll_once(self) -> None:
        """Poll every source once, integrate, publish a new snapshot."""
        assert self.provider is not None
        if self._slurm is not None:
            await self._slurm.refresh()  # the job-mapping directory, read off the loop
        reports = await asyncio.gather(*(self._poll_source(s) for s in self.sources))
        context = self.provider.current()
        # Rule matching (long command lines, many rules) runs off the loop and counts in the poll's duration.
        reports = [await asyncio.to_thread(attribute_ahead, r, context.attributor, self.clock) for r in reports]
        if self._slurm is not None:
            # New Slurm jobs were just queued for scontrol: a moment lets their first interval go to their account.
            await self._slurm.settle(min(SLURM_SETTLE_SECONDS, self.options.interval / 2))
        now, wall_now = self.clock.monotonic(), self.clock.time()
        for report in reports:
            if report.host_hints is not None:
                self.provider.note_hints(report.host_hints)
            self.ledger.ingest(report, context, now, wall_now)
        self._record_slurm()
        self.cache.publish(self.ledger.snapshot(self.clock.monotonic()))  # rendered by the first scrape
        self._ready = True
        await self._save_idle_clock()

    async def _poll_source(self, source: Source) -> SourceReport:
        """A source's poll, bounded by the interval; a slow poll is reported, not waited for.

        A poll that finishes late is not lost: its report is taken on the next cycle. Until a
        source has been stuck for STALLED_POLLS cycles its devices keep their last reading (a
        slow poll is not a lost GPU); after that they show as down.
        """
        name = source.name
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = asyncio.create_task(source.poll())
        timeout = max(1.0, self.options.interval)
        try:
            report = await asyncio.wait_for(asyncio.shield(pending), timeout)
        except asyncio.TimeoutError:
            stalled = self._stalled[name] = self._stalled.get(name, 0) + 1
            log.warning(
                "%s poll has taken longer than %.1fs (%d cycle(s)); reporting it as failed", name, timeout, stalled
            )
            return SourceReport(
                name,
                (),
                False,
                timeout,
                self.clock.time(),
                (("timeout", 1),),
                complete=False,
                stalled=stalled < STALLED_POLLS,
            )
        except Exception as exc:  # a source must not raise, but one bug must not stop the loop
            log.exception("%s poll raised", name)
            report = SourceReport(name, (), False, 0.0, self.clock.time(), ((type(exc).__name__, 1),), complete=False)
        del self._pending[name]
        self._stalled.pop(name, None)
        return report

    async def _context_loop(self) -> None:
        assert self.provider is not None
        while True:
            await asyncio.sleep(CONTEXT_REFRESH_SECONDS)
            try:
                await self.provider.refresh()
            except Exception:
                log.exception("context refresh failed; keeping the previous context")
            self._record_context()

    def _publish(self) -> None:
        self.cache.publish(self.ledger.snapshot(self.clock.monotonic()))

    async def reload(self) -> bool:
        """SIGHUP: re-read the configuration; a bad file is refused and the old one stays."""
        try:
            # Off the loop: a file of 40,000 rules takes seconds to parse and compile.
            config = await prepare_config(self.options.config_file)
        except ConfigInvalid as exc:
            log.error("configuration reload refused, keeping the previous one: %s", exc)
            self.ledger.count_error("config", "reload_invalid")
            self.ledger.record_config_reload(False, self.clock.time())
            return False
        needs_restart = [name for name in self._restart_sections if getattr(config, name) != self._built_with[name]]
        if needs_restart:
            log.warning(
                "configuration reload: %s changed and take%s effect at the next restart; the rest is in force now",
                " and ".join(needs_restart),
                "" if len(needs_restart) > 1 else "s",
            )
        self.config = config
        self.ledger.update_settings(config.accounting)
        if self._slurm is not None:
            self._slurm.apply(self.environment.attribution_settings(config.attribution))
        provider = self._new_provider(config)
        await provider.start()
        self.provider = provider
        self._context_error_seen = {}  # the new provider counts from zero
        self._record_context()
        self.ledger.record_config_reload(True, self.clock.time())
        log.info("configuration reloaded from %s", self.options.config_file or "defaults")
        return True

    async def _shutdown_sources(self) -> None:
        for source in self.sources:
            pending = self._pending.get(source.name)
            # A source still inside a poll is wedged (e.g. a hung driver call): don't wait long for it.
            timeout = SHUTDOWN_GRACE_SECONDS if pending is None or pending.done() else WEDGED_STOP_SECONDS
            try:
                await asyncio.wait_for(source.stop(), timeout)
            except asyncio.TimeoutError:
                log.warning("stopping %s: gave up after %.1fs", source.name, timeout)
            except Exception as exc:
                log.warning("stopping %s: %s", source.name, exc)

    async def _shutdown(self) -> None:
        if self._slurm is not None:
            self._slurm.close()
        await self._save_idle_clock()
        await self._shutdown_sources()
        if self._guard is not None:
            self._guard.stop()
        if self._runner is not None:
            server = self._runner.server
            transports = [c.transport for c in server.connections if c.transport is not None] if server else []
            deadline = asyncio.get_running_loop().time() + SHUTDOWN_GRACE_SECONDS
            await self._runner.cleanup()
            await _flushed(transports, deadline)
        self.environment.close()


def host_environment(demo: str | None) -> HostEnvironment:
    """The real host, or the one a scenario simulates (a built-in name or a file; ConfigInvalid if neither)."""
    if demo is None:
        return RealHost()
    from exporter.sim.host import SimulatedHost

    return SimulatedHost.load(demo)


def restart_sections(registry: tuple[SourceSpec, ...]) -> tuple[str, ...]:
    """Config sections that take effect only at a restart: the sources' own, and RESTART_SECTIONS."""
    return (*(s.config_section for s in registry if s.config_section), *RESTART_SECTIONS)


async def _flushed(transports: Sequence[asyncio.BaseTransport], deadline: float) -> None:
    """Wait, until the loop time `deadline`, for closed connections to hand their buffered bytes to the kernel.

    A scrape answered during shutdown may still sit in asyncio's write buffer when aiohttp's
    cleanup returns; ending the event loop then would cut the body short. A client that stopped
    reading gets nothing more once the grace period is over.
    """
    loop = asyncio.get_running_loop()
    while loop.time() < deadline and any(
        isinstance(t, asyncio.WriteTransport) and t.get_write_buffer_size() for t in transports
    ):
        await asyncio.sleep(0.01)
