"""The scrape Prometheus really makes: the exporter against the floor, side by side, on simulated hardware.

Prometheus scrapes once per interval, so nearly every scrape is the first one of a new snapshot.
For each configuration (GPUs x poll interval x scrape interval) this starts, at the same time:

- the exporter (`python -m exporter --demo <scenario>`), scraped every N s with Prometheus'
  headers (OpenMetrics preferred, gzip) over one keep-alive connection;
- the floor: a bare loop (`scrape_cadence.py floor`) that makes only the driver calls for the same
  data, through the same pynvml-compatible simulator, at the same poll interval and with the same
  spacing of the two expensive reads (sample buffer, energy counter) as the NVML source. On the
  Neuron host (`--gpus 0`) the floor reads the same simulated neuron-monitor's lines and only
  `json.loads` them (the monitor processes themselves are counted on neither side; the
  exporter's Neuron parser child is counted on the exporter's).

It prints exporter CPU / floor CPU (both measured over the same window, so load from other jobs
on the machine hits both; from each thread's schedstat, in ns, since clock ticks are too coarse
for a few ms a second), scrape p50/p99/max, body bytes and RSS. Run each configuration a few
times (`--repeat`) on a shared machine and report the range.

    .venv/bin/python bench/scrape_cadence.py                      # the whole matrix, 60 s per run
    .venv/bin/python bench/scrape_cadence.py --gpus 64 --poll 1 --scrape 1 --repeat 3
    .venv/bin/python bench/scrape_cadence.py --exporter-root /tmp/before  # an older checkout, for a before/after
    .venv/bin/python bench/scrape_cadence.py --gpus 0 --poll 1 --scrape 1  # the Neuron host (trn1n-32-runtimes)
    .venv/bin/python bench/scrape_cadence.py render                # in process: render cost, old path vs kept lines
    .venv/bin/python bench/scrape_cadence.py serve                 # in process: whole scrapes over HTTP, new vs cached
    .venv/bin/python bench/scrape_cadence.py gzip                  # size and CPU of gzip levels 1, 6, 9
    .venv/bin/python bench/scrape_cadence.py rss                   # RSS after each import
    .venv/bin/python bench/scrape_cadence.py poll-step             # in process: what each poll holds the loop for
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/scrape_cadence.py` from a checkout, for bench._common

from bench._common import (  # noqa: E402
    FLEET_64,
    FLEET_64_CONFIG,
    Connection,
    cpu_seconds_precise,
    free_port,
    memory_kib,
    neuron_parser_child,
    pct,
    start_demo_exporter,
)

SCENARIOS = {8: "p4d-idle-fleet", 64: str(FLEET_64)}
# 32 runtimes on all 32 NeuronCores: neuron-monitor lines of about 0.35 MB from the simulator.
NEURON_SCENARIO = ROOT / "bench" / "scenarios" / "trn1n-32-runtimes.yaml"
NEURON_CONFIG = "neuron:\n  period: {period}s\n"


# --- the floor -----------------------------------------------------------------------------------


def floor_loop(scenario_name: str, interval: float) -> None:
    """Poll the simulated driver for what the exporter reads, and nothing else, until killed."""
    from exporter.clock import SystemClock
    from exporter.sim.fake_nvml import FakeNvml
    from exporter.sim.scenario import load_scenario
    from exporter.sources.nvml_integrate import DUE_SHARE, ENERGY_READ_SECONDS, SAMPLES_READ_SECONDS

    clock = SystemClock()
    nvml = FakeNvml(load_scenario(scenario_name), clock).module()
    nvml.nvmlInit()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    events = nvml.nvmlEventSetCreate()
    last_seen = dict.fromkeys(range(len(handles)), 0)
    energy_at = samples_at = -1e9
    next_tick = time.monotonic()
    while True:
        now = time.monotonic()
        read_energy = now - energy_at >= ENERGY_READ_SECONDS * DUE_SHARE
        read_samples = now - samples_at >= SAMPLES_READ_SECONDS * DUE_SHARE
        energy_at = now if read_energy else energy_at
        samples_at = now if read_samples else samples_at
        for i, h in enumerate(handles):
            nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2)
            nvml.nvmlDeviceGetPowerUsage(h)
            if read_energy:
                nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            nvml.nvmlDeviceGetComputeRunningProcesses_v3(h)
            nvml.nvmlDeviceGetGraphicsRunningProcesses_v3(h)
            if read_samples:
                try:
                    _, samples = nvml.nvmlDeviceGetSamples(h, nvml.NVML_GPU_UTILIZATION_SAMPLES, last_seen[i])
                    if samples:
                        last_seen[i] = max(s.timeStamp for s in samples)
                except nvml.NVMLError:
                    pass
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlEventSetWait_v2(events, 0)
        next_tick += interval
        time.sleep(max(0.0, next_tick - time.monotonic()))


def neuron_floor_loop(scenario_name: str, interval: float) -> None:
    """Read the simulated neuron-monitor's lines and json.loads each one, until killed: the Neuron floor."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "monitor.json"
        config.write_text(json.dumps({"period": f"{interval:g}s"}))
        argv = [sys.executable, "-m", "exporter.sim.neuron_monitor", "-c", str(config), "--scenario", scenario_name]
        monitor = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert monitor.stdout is not None
        try:
            for line in monitor.stdout:
                json.loads(line)
        finally:
            monitor.kill()
            monitor.wait()


# --- one configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    gpus: int
    poll: float
    scrape: float | None  # None: not scraped
    exporter_cpu: float  # seconds over the window
    floor_cpu: float
    window: float
    latencies_ms: tuple[float, ...]
    body_bytes: int
    exporter_rss_kib: int
    floor_rss_kib: int
    child_rss_kib: int = 0  # the Neuron parser child's, whose CPU is in exporter_cpu

    def row(self) -> str:
        """One Markdown table row."""
        ratio = self.exporter_cpu / self.floor_cpu if self.floor_cpu else float("inf")
        scrape = f"every {self.scrape:g} s" if self.scrape else "none"
        if self.latencies_ms:
            ms = self.latencies_ms
            lat = f"{pct(list(ms), 50):.1f} | {pct(list(ms), 99):.1f} | {max(ms):.1f}"
        else:
            lat = "— | — | —"
        return (
            f"| {self.gpus or 'Neuron: 32 cores, 0.35 MB lines'} | {self.poll:g} s | {scrape} | {1000 * self.exporter_cpu / self.window:.1f} | "
            f"{1000 * self.floor_cpu / self.window:.1f} | {ratio:.1f}× | {lat} | {self.body_bytes / 1024:.1f} | "
            f"{self.exporter_rss_kib / 1024:.1f}{f' + {self.child_rss_kib / 1024:.1f}' if self.child_rss_kib else ''} | "
            f"{self.floor_rss_kib / 1024:.1f} |"
        )


HEADER = (
    "| GPUs | poll | scrapes | exporter CPU ms/s | floor CPU ms/s | exporter ÷ floor | scrape p50 ms | p99 ms | "
    "max ms | body KiB (gzip) | exporter RSS MiB (+ Neuron parser child) | floor RSS MiB |\n"
    "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


async def scrape_every(port: int, period: float, until: float) -> tuple[list[float], int]:
    """Scrape at a fixed period (like Prometheus) until `until`; latencies in ms and the last body size."""
    connection = Connection(port)
    await connection.open()
    latencies: list[float] = []
    size = 0
    next_at = time.perf_counter() + period / 2
    try:
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            t0 = time.perf_counter()
            size = await connection.get()
            latencies.append(1000 * (time.perf_counter() - t0))
            next_at += period
    finally:
        connection.close()
    return latencies, size


def measure(gpus: int, poll: float, scrape: float | None, seconds: float, root: Path, config: Path) -> Run:
    """One side-by-side run of the exporter and the floor; `gpus` 0 is the Neuron host."""
    if gpus:
        scenario, floor_mode = SCENARIOS[gpus], "floor"
        extra = ["--config.file", str(config)] if gpus == 64 else []
    else:
        scenario, floor_mode = str(NEURON_SCENARIO), "neuron-floor"
        neuron_config = config.with_name("neuron.yml")
        neuron_config.write_text(NEURON_CONFIG.format(period=f"{poll:g}"))
        extra = ["--config.file", str(neuron_config)]
    floor = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), floor_mode, "--scenario", scenario, "--interval", str(poll)],
        cwd=ROOT,
    )
    exporter, port = start_demo_exporter(scenario, f"{poll:g}s", extra, root=root)
    try:
        time.sleep(max(3.0, 2 * poll))  # warm-up: both past their start and first polls
        child = neuron_parser_child(exporter.pid)  # its CPU counts as the exporter's

        def exporter_cpu() -> float:
            return cpu_seconds_precise(exporter.pid) + (cpu_seconds_precise(child) if child is not None else 0.0)

        e0, f0, t0 = exporter_cpu(), cpu_seconds_precise(floor.pid), time.perf_counter()
        until = t0 + seconds
        if scrape:
            latencies, size = asyncio.run(scrape_every(port, scrape, until))
        else:
            latencies, size = [], 0
        time.sleep(max(0.0, until - time.perf_counter()))
        if floor.poll() is not None:
            raise SystemExit(f"the floor loop exited with status {floor.returncode}; its error is above")
        e1, f1, t1 = exporter_cpu(), cpu_seconds_precise(floor.pid), time.perf_counter()
        return Run(
            gpus,
            poll,
            scrape,
            e1 - e0,
            f1 - f0,
            t1 - t0,
            tuple(latencies),
            size,
            memory_kib(exporter.pid)["VmRSS"],
            memory_kib(floor.pid)["VmRSS"],
            memory_kib(child)["VmRSS"] if child is not None else 0,
        )
    finally:
        for proc in (exporter, floor):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def matrix(args: argparse.Namespace) -> None:
    scrapes: list[float | None] = [None if s == 0 else s for s in args.scrape]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yml"
        config.write_text(FLEET_64_CONFIG)
        print(HEADER, flush=True)
        for gpus, poll, scrape in itertools.product(args.gpus, args.poll, scrapes):
            for _ in range(args.repeat):
                print(measure(gpus, poll, scrape, args.seconds, Path(args.exporter_root), config).row(), flush=True)


# --- in process: render cost, gzip levels, memory per import -------------------------------------


async def _started_daemon(gpus: int, clock: Any) -> Any:
    """A Daemon for the scenario with its sources and context started, not its loops."""
    from exporter.config import Config
    from exporter.config.load import load_config
    from exporter.context.provider import ContextProvider
    from exporter.daemon import Daemon, Options

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yml"
        config.write_text(FLEET_64_CONFIG if gpus else NEURON_CONFIG.format(period="1"))
        loaded = load_config(str(config)) if gpus != 8 else Config()
    scenario = SCENARIOS[gpus] if gpus else str(NEURON_SCENARIO)
    daemon = Daemon(Options(demo=scenario, interval=1.0), loaded, clock)
    daemon._build_sources()
    daemon.provider = ContextProvider(loaded, clock, daemon.environment)
    await daemon.provider.start()
    for source in daemon.sources:
        await source.start()
    return daemon


async def _snapshots(gpus: int, count: int) -> list[Any]:
    """`count` consecutive snapshots of the scenario, polled 1 s apart on a manual clock."""
    from exporter.clock import ManualClock

    clock = ManualClock()
    daemon = await _started_daemon(gpus, clock)
    out = []
    for _ in range(count):
        clock.advance(1.0)
        await daemon.poll_once()
        out.append(daemon.ledger.snapshot(clock.monotonic()))
    for source in daemon.sources:
        await source.stop()
    return out


async def _poll_step(gpus: int, count: int) -> tuple[list[float], list[float]]:
    """CPU ms of the two steps of a poll that run on the event loop: the ledger's ingest, the snapshot.

    `gpus` 0 is the Neuron host: its simulated neuron-monitor runs in real time, so that run takes
    a second per poll.
    """
    from exporter.clock import ManualClock, SystemClock
    from exporter.context.owner.attribution import attribute_ahead

    manual = ManualClock()
    clock = manual if gpus else SystemClock()
    daemon = await _started_daemon(gpus, clock)
    ingest, snapshot = [], []
    for i in range(count + 5):  # the first polls fill caches
        if gpus:
            manual.advance(1.0)
        else:
            await asyncio.sleep(1.0)  # a line a second from the monitor
        reports = [await source.poll() for source in daemon.sources]
        context = daemon.provider.current()
        reports = [attribute_ahead(r, context.attributor, clock) for r in reports]
        t0 = time.thread_time()
        for report in reports:
            daemon.ledger.ingest(report, context, clock.monotonic())
        t1 = time.thread_time()
        daemon.ledger.snapshot(clock.monotonic())
        t2 = time.thread_time()
        if i >= 5:
            ingest.append(1000 * (t1 - t0))
            snapshot.append(1000 * (t2 - t1))
    for source in daemon.sources:
        await source.stop()
    return ingest, snapshot


def poll_step(args: argparse.Namespace) -> None:
    """The part of each poll that holds the event loop: ledger ingest and snapshot, CPU ms."""
    print("| GPUs | ingest ms (median / max) | snapshot ms (median / max) |")
    print("| ---: | ---: | ---: |")
    for gpus in args.gpus:
        ingest, snapshot = asyncio.run(_poll_step(gpus, args.runs))
        print(
            f"| {gpus} | {statistics.median(ingest):.2f} / {max(ingest):.2f} "
            f"| {statistics.median(snapshot):.2f} / {max(snapshot):.2f} |",
            flush=True,
        )


def _cpu_ms(fn: Callable[[Any], object], inputs: Iterable[Any]) -> list[float]:
    """CPU ms of `fn(x)` for each input."""
    out = []
    for x in inputs:
        t0 = time.process_time()
        fn(x)
        out.append(1000 * (time.process_time() - t0))
    return out


def _reference_openmetrics(snapshot: Any) -> bytes:
    """The render before kept lines: prometheus-client families and its OpenMetrics encoder."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    from exporter.exposition.collector import SnapshotCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return bytes(generate_openmetrics(registry))  # type: ignore[no-untyped-call]


def render_cost(args: argparse.Namespace) -> None:
    """CPU per render of a new snapshot (OpenMetrics): prometheus-client's families and encoder vs kept lines."""
    from exporter.exposition.render import Renderer

    print("| GPUs | series | prometheus-client, OpenMetrics only, ms | kept lines, OpenMetrics, ms | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for gpus in args.gpus:
        snaps = asyncio.run(_snapshots(gpus, args.runs + 1))
        reference = _cpu_ms(_reference_openmetrics, snaps[1:])
        renderer = Renderer(process_metrics=False)
        renderer.plain(snaps[0], True)  # the first render fills the kept lines
        ours = _cpu_ms(functools.partial(renderer.plain, openmetrics=True), snaps[1:])
        series = renderer.plain(snaps[-1], True).body.count(b"\n") - 1
        a, b = statistics.median(reference), statistics.median(ours)
        print(f"| {gpus} | {series} | {a:.2f} | {b:.2f} | {a / b:.1f}× |", flush=True)


def gzip_levels(args: argparse.Namespace) -> None:
    """Size and CPU of each gzip level on one OpenMetrics body."""
    from exporter.exposition.render import Renderer

    print("| GPUs | plain KiB | level | gzipped KiB | CPU ms (median) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for gpus in args.gpus:
        body = Renderer(process_metrics=False).plain(asyncio.run(_snapshots(gpus, 2))[-1], True).body
        for level in (1, 6, 9):
            size = len(gzip.compress(body, compresslevel=level, mtime=0))
            pack = functools.partial(gzip.compress, compresslevel=level, mtime=0)
            cost = statistics.median(_cpu_ms(pack, [body] * args.runs))
            print(f"| {gpus} | {len(body) / 1024:.1f} | {level} | {size / 1024:.1f} | {cost:.2f} |", flush=True)


async def _serve_cost(gpus: int, runs: int) -> tuple[float, float]:
    """CPU ms per scrape through the real aiohttp app, in one process with its client: new snapshots, cached bytes."""
    from aiohttp import web

    from exporter.exposition.render import RenderCache
    from exporter.web.server import build_app

    snaps = await _snapshots(gpus, runs + 1)
    cache = RenderCache()
    runner = web.AppRunner(build_app(cache, lambda: True), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    connection = Connection(port)
    await connection.open()
    try:
        cache.publish(snaps[0])
        await connection.get()
        t0 = time.process_time()
        for snapshot in snaps[1:]:
            cache.publish(snapshot)
            await connection.get()
        fresh = (time.process_time() - t0) / runs
        t0 = time.process_time()
        for _ in range(runs):
            await connection.get()
        cached = (time.process_time() - t0) / runs
    finally:
        connection.close()
        await runner.cleanup()
    return 1000 * fresh, 1000 * cached


def serve_cost(args: argparse.Namespace) -> None:
    """Whole scrapes in process: what a new snapshot costs over HTTP, next to a repeat of cached bytes."""
    print("| GPUs | CPU per scrape of a new snapshot, ms | of cached bytes, ms |")
    print("| ---: | ---: | ---: |")
    for gpus in args.gpus:
        fresh, cached = asyncio.run(_serve_cost(gpus, args.runs))
        print(f"| {gpus} | {fresh:.2f} | {cached:.2f} |", flush=True)


RSS_STEPS = (
    ("the interpreter", ""),
    ("asyncio (and ssl)", "import asyncio, ssl"),
    ("the NVML binding (pynvml)", "import pynvml"),
    ("yaml", "import yaml"),
    ("prometheus_client", "import prometheus_client"),
    ("aiohttp (web)", "from aiohttp import web"),
    ("the exporter's modules (exporter.daemon, cli)", "import exporter.cli, exporter.daemon"),
    ("the simulator", "import exporter.sim.fake_nvml, exporter.sim.scenario"),
)


def rss_per_import(args: argparse.Namespace) -> None:
    """VmRSS after each import, in a fresh interpreter, in the order the daemon loads them."""
    script = "import sys\nfrom pathlib import Path\n"
    script += "def rss():\n    return [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS')][0]\n"
    for label, statement in RSS_STEPS:
        script += f"{statement}\nprint({label!r}, rss().split()[1], flush=True)\n"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    print("| after | VmRSS MiB | added MiB |")
    print("| --- | ---: | ---: |")
    previous = None
    for line in out.stdout.splitlines():
        label, _, kib = line.rpartition(" ")
        mib = int(kib) / 1024
        added = "" if previous is None else f"{mib - previous:.1f}"
        print(f"| {label} | {mib:.1f} | {added} |")
        previous = mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode",
        nargs="?",
        default="matrix",
        choices=["matrix", "floor", "neuron-floor", "render", "serve", "gzip", "rss", "poll-step"],
    )
    parser.add_argument(
        "--gpus", type=int, nargs="+", choices=[0, *sorted(SCENARIOS)], default=[8, 64], help="0: the Neuron host"
    )
    parser.add_argument("--poll", type=float, nargs="+", default=[1.0, 5.0], help="poll intervals, s")
    parser.add_argument("--scrape", type=float, nargs="+", default=[1.0, 15.0], help="scrape intervals, s (0: none)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run (default 60)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (default 1)")
    parser.add_argument("--runs", type=int, default=30, help="render/gzip: timed repetitions (default 30)")
    parser.add_argument("--exporter-root", default=str(ROOT), help="checkout whose exporter runs (default this one)")
    parser.add_argument("--scenario", help="floor: the scenario")
    parser.add_argument("--interval", type=float, default=1.0, help="floor: poll interval, s")
    args = parser.parse_args()
    if args.mode == "floor":
        floor_loop(args.scenario, args.interval)
    elif args.mode == "neuron-floor":
        neuron_floor_loop(args.scenario, args.interval)
    elif args.mode == "render":
        render_cost(args)
    elif args.mode == "serve":
        serve_cost(args)
    elif args.mode == "gzip":
        gzip_levels(args)
    elif args.mode == "rss":
        rss_per_import(args)
    elif args.mode == "poll-step":
        poll_step(args)
    else:
        matrix(args)


if __name__ == "__main__":
    main()
