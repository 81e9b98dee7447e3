"""CPU per poll cycle and memory of the real exporter process on simulated hardware.

1. Starts `python -m exporter --demo <scenario> --collector.interval 1s` and reads utime + stime
   from /proc/<pid>/stat over a window with no scrapes, then over a window with one scraper every
   15 s (Prometheus' headers: OpenMetrics preferred, gzip).
2. Keeps it running with the 15 s scraper and samples VmRSS until `--rss-minutes` have passed.
3. In process, splits one poll cycle into its parts (source poll, of which the simulated driver,
   accounting, snapshot, render) so the simulator's own cost can be told apart from the exporter's.

    .venv/bin/python bench/bench_poll_cpu.py                        # 60 s windows, RSS at 10 min
    .venv/bin/python bench/bench_poll_cpu.py --seconds 30 --rss-minutes 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import FLEET_64_CONFIG, cpu_seconds, memory_kib, start_demo_exporter  # noqa: E402

SCRAPE_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}


def scrape(port: int) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=SCRAPE_HEADERS)
    with urllib.request.urlopen(request, timeout=10) as response:
        return len(response.read())


def window(pid: int, port: int, seconds: float, scrape_every: float | None) -> float:
    """CPU seconds the exporter used over `seconds`, scraping every `scrape_every` s if given."""
    start_cpu = cpu_seconds(pid)
    start = time.monotonic()
    next_scrape = start
    while (now := time.monotonic()) < start + seconds:
        if scrape_every is not None and now >= next_scrape:
            scrape(port)
            next_scrape += scrape_every
        time.sleep(min(0.2, max(0.0, start + seconds - now)))
    return cpu_seconds(pid) - start_cpu


def process_bench(args: argparse.Namespace) -> list[str]:
    config: Path | None = None
    extra: list[str] = []
    if Path(args.scenario).name == "fleet-64.yaml":
        # The synthetic 64-GPU host has no list price: give it one so money series are rendered too.
        config = Path(tempfile.mkdtemp()) / "bench.yml"
        config.write_text(FLEET_64_CONFIG)
        extra = ["--config.file", str(config)]
    proc: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    rows = []
    try:
        proc, port = start_demo_exporter(args.scenario, f"{args.interval}s", extra)
        startup_cpu = cpu_seconds(proc.pid)
        time.sleep(5.0)  # let imports, first contact and caches settle
        polls = args.seconds / args.interval
        for label, every in (("no scrapes", None), ("one scraper every 15 s", 15.0)):
            used = window(proc.pid, port, args.seconds, every)
            rows.append(
                f"| {args.scenario}, {args.interval:g} s interval, {label} | {args.seconds:.0f} s | "
                f"{1000 * used / polls:.2f} ms | {100 * used / args.seconds:.2f} % |"
            )
            print(rows[-1], flush=True)
        rss_rows = []
        for minute in sorted({1, 2, 3, 5, 10, args.rss_minutes}):
            if minute > args.rss_minutes:
                continue
            remaining = started + 60 * minute - time.monotonic()
            if remaining > 0:
                window(proc.pid, port, remaining, 15.0)
            mem = memory_kib(proc.pid)
            rss_rows.append(
                f"| {minute} min | {mem['VmRSS'] / 1024:.1f} MiB | {mem['RssAnon'] / 1024:.1f} MiB | "
                f"{mem['VmHWM'] / 1024:.1f} MiB |"
            )
            print(rss_rows[-1], flush=True)
        rows.append("")
        rows.append(f"Start-up (to ready) CPU: {startup_cpu:.2f} s")
        rows.append("")
        rows += ["| uptime | VmRSS | of which anonymous | peak (VmHWM) |", "| --- | ---: | ---: | ---: |", *rss_rows]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if config is not None:
            shutil.rmtree(config.parent, ignore_errors=True)
    return rows


async def cycle_breakdown(scenario_name: str, interval: float, cycles: int = 200) -> list[str]:
    """Mean cost of each part of a poll cycle, in process, on a ManualClock."""
    from exporter.accounting.ledger import Ledger
    from exporter.clock import ManualClock
    from exporter.config.model import AccountingSettings, AttributionSettings
    from exporter.context.model import HostContext, HostIdentity, PriceQuote
    from exporter.context.owner.attribution import RuleAttributor
    from exporter.exposition.render import RenderCache
    from exporter.sim.fake_nvml import FakeNvml, SimProcFs
    from exporter.sim.scenario import load_scenario
    from exporter.sources.nvml import NvmlSource

    clock = ManualClock()
    fake = FakeNvml(load_scenario(scenario_name), clock)
    module = fake.module()
    in_fake = [0.0]

    def timed(fn: object) -> object:
        def wrapper(*a: object, **k: object) -> object:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)  # type: ignore[operator]
            finally:
                in_fake[0] += time.perf_counter() - t0

        return wrapper

    for name in dir(module):
        if name.startswith("nvml") and callable(getattr(module, name)):
            setattr(module, name, timed(getattr(module, name)))
    procfs = SimProcFs(fake)
    procfs.facts = timed(procfs.facts)  # type: ignore[method-assign]
    source = NvmlSource(lambda: module, clock, procfs)
    ledger = Ledger(AccountingSettings())
    context = HostContext(
        HostIdentity(instance_type="x"), PriceQuote(32.0, "config"), RuleAttributor(AttributionSettings())
    )
    cache = RenderCache()
    parts = dict.fromkeys(
        ("poll", "driver (simulated)", "accounting", "snapshot", "render (OpenMetrics, gzip: one scrape)"), 0.0
    )
    for i in range(cycles + 10):
        clock.advance(interval)
        in_fake[0] = 0.0
        t0 = time.perf_counter()
        report = await source.poll()
        t1 = time.perf_counter()
        ledger.ingest(report, context, clock.monotonic())
        t2 = time.perf_counter()
        snapshot = ledger.snapshot(clock.monotonic())
        t3 = time.perf_counter()
        cache.publish(snapshot)
        cache.get_now(openmetrics=True, gzipped=True)  # what a Prometheus scrape of this snapshot asks for
        t4 = time.perf_counter()
        if i >= 10:
            parts["poll"] += t1 - t0
            parts["driver (simulated)"] += in_fake[0]
            parts["accounting"] += t2 - t1
            parts["snapshot"] += t3 - t2
            parts["render (OpenMetrics, gzip: one scrape)"] += t4 - t3
    await source.stop()
    rows = ["| part | ms per cycle |", "| --- | ---: |"]
    for name, total in parts.items():
        rows.append(f"| {name} | {1000 * total / cycles:.2f} |")
    own = (
        parts["poll"]
        - parts["driver (simulated)"]
        + sum(v for k, v in parts.items() if k not in ("poll", "driver (simulated)"))
    )
    rows.append(f"| exporter's own work (all but the simulated driver) | {1000 * own / cycles:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="p4d-idle-fleet")
    parser.add_argument("--interval", type=float, default=1.0, help="collector interval in seconds (default 1)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each CPU window (default 60)")
    parser.add_argument("--rss-minutes", type=int, default=10, help="run this long for the RSS figure (default 10)")
    parser.add_argument("--skip-process", action="store_true", help="only the in-process breakdown")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if not args.skip_process:
        print("| run | window | CPU per poll cycle | of one core |\n| --- | ---: | ---: | ---: |")
        rows = process_bench(args)
        print("\n".join(rows[2:]))
    print()
    print(f"Poll cycle breakdown, in process ({args.scenario}, {args.interval:g} s of simulated time per cycle):")
    print("\n".join(asyncio.run(cycle_breakdown(args.scenario, args.interval))))


if __name__ == "__main__":
    main()
