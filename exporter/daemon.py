"""The daemon: wires sources → accounting → exposition, serves HTTP, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from exporter.accounting.idle_clock import IdleClockFile, IdleMark
from exporter.accounting.ledger import Ledger
from exporter.clock import Clock, SystemClock
from exporter.config import Config, ConfigInvalid
from exporter.context.owner.attribution import attribute_ahead
from exporter.context.provider import ContextProvider
from exporter.exposition.render import RenderCache
from exporter.readings import SourceReport
from exporter.reload import prepare_config
from exporter.sources.base import Source
from exporter.sources.procfs import ProcFs
from exporter.web.landing import LandingSettings
from exporter.web.server import build_app, parse_listen_address

log = logging.getLogger(__name__)

DEFAULT_PORT = 11094  # outside the 9100-9999 range allocated to other exporters
CONTEXT_REFRESH_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 1.5
STALLED_POLLS = 3  # cycles a stuck source's devices keep their last reading before showing down
WEDGED_STOP_SECONDS = 0.2
# Configuration sections a SIGHUP cannot apply: the neuron-monitor subprocess and the pod-resources
# watcher are built once at start. Every other section takes effect on reload.
RESTART_SECTIONS = ("neuron", "kubernetes")


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
    demo: str | None = None
    collector_nvml: bool | None = None  # None: on, but off on a Neuron host without an NVIDIA driver
    collector_neuron: bool | None = None  # None: on when neuron-monitor exists
    neuron_monitor_path: str | None = None
    state_directory: str | None = None


class Daemon:
    """One exporter process."""

    def __init__(self, options: Options, config: Config, clock: Clock | None = None) -> None:
        self.options = options
        self.config = config
        self._built_with = {name: getattr(config, name) for name in RESTART_SECTIONS}  # in force until a restart
        self.clock = clock or SystemClock()
        self.cache = RenderCache()
        self.ledger = Ledger(config.accounting, config.attribution.max_label_values)
        self.sources: list[Source] = []
        self.provider: ContextProvider | None = None
        self._ready = False
        self._stop = asyncio.Event()
        self._pending: dict[str, asyncio.Task[SourceReport]] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._runner: web.AppRunner | None = None
        self._guard: Any = None
        self._web_watcher: Any = None
        self._context_error_seen: dict[tuple[str, str], int] = {}
        self._pods: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._scenario: Any = None
        self._reloads: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        self._stalled: dict[str, int] = {}
        self._idle_file: IdleClockFile | None = None
        self._demo_history: dict[str, float] = {}  # --demo: UUID -> Unix time the scenario says it last computed

    # --- assembly ---------------------------------------------------------------------------
    def _build_sources(self) -> None:
        from exporter.sources.nvml import NvmlSource, load_pynvml

        options, config = self.options, self.config
        if options.demo:
            self._build_demo_sources(options.demo)
            return
        if options.collector_nvml is not False:
            self.sources.append(NvmlSource(load_pynvml, self.clock, ProcFs()))
        neuron_settings = config.neuron
        if options.neuron_monitor_path:
            neuron_settings = replace(neuron_settings, monitor_path=options.neuron_monitor_path)
        if options.collector_neuron is not False:
            from exporter.sources.neuron import NeuronSource, neuron_auto_enabled

            if options.collector_neuron or neuron_auto_enabled(neuron_settings):
                self.sources.append(NeuronSource(neuron_settings, self.clock, ProcFs()))
            else:
                log.info(
                    "neuron collector off: %s not found (use --collector.neuron to force it on)",
                    neuron_settings.monitor_path,
                )

    def _build_demo_sources(self, name: str) -> None:
        from exporter.sim.fake_nvml import FakeNvml, SimProcFs
        from exporter.sources.nvml import NvmlSource

        scenario = self._demo_scenario()
        log.info("demo: simulating scenario %r (%s)", scenario.name, scenario.host.instance_type or "no instance type")
        if scenario.gpus or scenario.nvml_missing or not scenario.neuron:
            fake = FakeNvml(scenario, self.clock)
            self._demo_history = fake.last_active_history()
            self.sources.append(NvmlSource(fake.module, self.clock, SimProcFs(fake)))
        if scenario.neuron is not None:
            from exporter.sim.neuron_monitor import ScenarioNeuronProcesses, write_fake_monitor_wrapper
            from exporter.sources.neuron import NeuronSource

            self._tmp = tempfile.TemporaryDirectory(prefix="accel-demo-")
            wrapper = write_fake_monitor_wrapper(Path(self._tmp.name), name)
            processes = ScenarioNeuronProcesses(scenario, self.clock.time())
            settings = replace(self.config.neuron, monitor_path=str(wrapper))
            self.sources.append(NeuronSource(settings, self.clock, processes))

    def _demo_scenario(self) -> Any:
        """The --demo scenario, parsed once (sources, provider and every reload share it)."""
        if self._scenario is None:
            from exporter.sim.scenario import load_scenario

            self._scenario = load_scenario(str(self.options.demo))
        return self._scenario

    def _demo_host(self) -> Any:
        return self._demo_scenario().host if self.options.demo else None

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
        self._drop_nvml_without_driver()
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
        """Continue each device's idle clock from the state directory (and, in --demo, the scenario's history)."""
        offset = self.clock.time() - self.clock.monotonic()
        if self._demo_history:
            # The simulated host has a past the exporter never saw; without it the demo's abandoned
            # job would look idle for only as long as the demo has run. A state file, newer, wins.
            log.info(
                "demo: idle clocks start from the scenario's history (%d GPU(s) with last_active before the start)",
                len(self._demo_history),
            )
            history = {uuid: IdleMark(at, "", at) for uuid, at in self._demo_history.items()}
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

    def _drop_nvml_without_driver(self) -> None:
        """On a Neuron host with no NVIDIA driver, an NVML collector left on would fail forever."""
        from exporter.sources.nvml import NvmlSource

        if self.options.collector_nvml is not None or not any(s.name == "neuron" for s in self.sources):
            return
        for source in list(self.sources):
            if isinstance(source, NvmlSource) and source.no_driver:
                log.info(
                    "nvml collector off: no NVIDIA driver on this Neuron host (use --collector.nvml to force it on)"
                )
                self.sources.remove(source)
                self._tasks.append(asyncio.create_task(source.stop(), name="nvml-stop"))

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
        provider = ContextProvider(config, self.clock, self._demo_host(), state_directory=self.options.state_directory)
        if self._pods is not None:
            pods = self._pods
            provider.set_pod_lookup(lambda facts: pods.assignments.for_cgroup(facts))
        return provider

    def _start_kubernetes(self) -> None:
        """Pod attribution through the kubelet's pod-resources API, when on a Kubernetes node."""
        settings = self.config.kubernetes
        if settings.enabled is False or self.options.demo:
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

    def _record_context(self) -> None:
        assert self.provider is not None
        now = self.clock.time()
        known, duration = self.provider.status()
        self.ledger.record_collector("price", known, duration, now if known else None)
        ok, duration = self.provider.metadata_status()
        self.ledger.record_collector("metadata", ok, duration, now if ok else None)
        for key, cumulative in self.provider.errors().items():
            # The provider reports cumulative counts; the ledger adds deltas.
            seen = self._context_error_seen.get(key, 0)
            if cumulative > seen:
                self.ledger.count_error(key[0], key[1], cumulative - seen)
                self._context_error_seen[key] = cumulative
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
        reports = await asyncio.gather(*(self._poll_source(s) for s in self.sources))
        context = self.provider.current()
        # Rule matching (long command lines, many rules) runs off the loop and counts in the poll's duration.
        reports = [await asyncio.to_thread(attribute_ahead, r, context.attributor, self.clock) for r in reports]
        now, wall_now = self.clock.monotonic(), self.clock.time()
        for report in reports:
            if report.host_hints is not None:
                self.provider.note_hints(report.host_hints)
            self.ledger.ingest(report, context, now, wall_now)
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
        needs_restart = [name for name in RESTART_SECTIONS if getattr(config, name) != self._built_with[name]]
        if needs_restart:
            log.warning(
                "configuration reload: %s changed and take%s effect at the next restart; the rest is in force now",
                " and ".join(needs_restart),
                "" if len(needs_restart) > 1 else "s",
            )
        self.config = config
        self.ledger.update_settings(config.accounting)
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
        if self._tmp is not None:
            self._tmp.cleanup()


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
