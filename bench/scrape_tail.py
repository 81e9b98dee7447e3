"""Where a slow scrape's time goes: the exporter with probes, scraped like Prometheus.

The exporter (`--demo`, from this checkout or `--exporter-root`) runs under a small wrapper that
records, inside the process, every cyclic-GC pass (generation, pause, thread) and every event-loop
callback that ran longer than `--slow-ms` (what it was). From outside, this script scrapes it every
`--scrape` seconds with Prometheus' headers and reads, around each scrape, how long the exporter's
threads waited for a CPU (the run-queue field of /proc/<pid>/task/*/schedstat): time the machine,
not the exporter, is to blame for. For the slowest `--explain` scrapes it prints what overlapped them.

    .venv/bin/python bench/scrape_tail.py --gpus 64 --poll 1 --scrape 1 --seconds 120
    .venv/bin/python bench/scrape_tail.py --exporter-root /tmp/before ...   # an older checkout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import FLEET_64, FLEET_64_CONFIG, Connection, free_port, pct  # noqa: E402

# Run inside the exporter's process before its main(): records GC passes and slow loop callbacks
# with wall-clock times, and writes them to the file named in argv[1] when the daemon returns.
PROBE = """
import asyncio.events, gc, json, sys, threading, time
out_path, slow_ms = sys.argv[1], float(sys.argv[2])
del sys.argv[1:3]
events = {"gc": [], "slow": []}
started = {}
def on_gc(phase, info):
    if phase == "start":
        started["t"] = time.perf_counter()
    elif "t" in started:
        ms = 1000 * (time.perf_counter() - started.pop("t"))
        events["gc"].append([time.time() - ms / 1000, ms, info["generation"], threading.current_thread().name])
gc.callbacks.append(on_gc)
run = asyncio.events.Handle._run
def name(handle):
    owner = getattr(handle._callback, "__self__", None)
    get_coro = getattr(owner, "get_coro", None)
    coro = get_coro() if get_coro is not None else None
    return getattr(coro, "__qualname__", None) or repr(handle)[:160]
def timed_run(self):
    t0, c0 = time.perf_counter(), time.thread_time()
    run(self)
    ms = 1000 * (time.perf_counter() - t0)
    if ms > slow_ms:
        cpu = 1000 * (time.thread_time() - c0)
        events["slow"].append([time.time() - ms / 1000, ms, name(self), cpu])
asyncio.events.Handle._run = timed_run
from exporter.cli import main
status = main(sys.argv[1:])
with open(out_path, "w") as f:
    json.dump(events, f)
sys.exit(status)
"""

SCENARIOS = {8: "p4d-idle-fleet", 64: str(FLEET_64), 0: str(ROOT / "bench" / "scenarios" / "trn1n-32-runtimes.yaml")}


@dataclass(frozen=True)
class Scrape:
    start: float  # wall clock
    ms: float
    run_queue_ms: float  # the exporter's threads' wait for a CPU during it


def run_queue_seconds(pid: int) -> float:
    """Total time the process's live threads spent runnable but not running (schedstat field 2)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


async def scrape_loop(port: int, pid: int, period: float, until: float) -> list[Scrape]:
    connection = Connection(port)
    await connection.open()
    out: list[Scrape] = []
    next_at = time.perf_counter() + period / 2
    try:
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            wall, q0, t0 = time.time(), run_queue_seconds(pid), time.perf_counter()
            await connection.get()
            ms = 1000 * (time.perf_counter() - t0)
            out.append(Scrape(wall, ms, 1000 * (run_queue_seconds(pid) - q0)))
            next_at += period
    finally:
        connection.close()
    return out


def overlapping(events: list[list[object]], start: float, end: float) -> list[list[object]]:
    """Events [start, ms, ...] that overlap [start, end]."""
    return [e for e in events if float(str(e[0])) < end and float(str(e[0])) + float(str(e[1])) / 1000 > start]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, choices=sorted(SCENARIOS), default=64)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--scrape", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--slow-ms", type=float, default=3.0, help="loop callbacks longer than this are recorded")
    parser.add_argument("--explain", type=int, default=8, help="the slowest N scrapes are explained")
    parser.add_argument("--exporter-root", default=str(ROOT))
    args = parser.parse_args()
    root = Path(args.exporter_root)
    with tempfile.TemporaryDirectory() as tmp:
        out_path = Path(tmp) / "events.json"
        config = Path(tmp) / "bench.yml"
        # 0 GPUs: the Neuron host, its simulated neuron-monitor writing a line every poll interval.
        config.write_text(FLEET_64_CONFIG if args.gpus else f"neuron:\n  period: {args.poll:g}s\n")
        port = free_port()
        argv = [sys.executable, "-c", PROBE, str(out_path), str(args.slow_ms), "--demo", SCENARIOS[args.gpus]]
        argv += ["--collector.interval", f"{args.poll:g}s", "--web.listen-address", f"127.0.0.1:{port}"]
        argv += ["--log.level", "warn"] + (["--config.file", str(config)] if args.gpus != 8 else [])
        proc = subprocess.Popen(argv, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
        try:
            time.sleep(max(3.0, 2 * args.poll))  # past start-up and the first polls
            until = time.perf_counter() + args.seconds
            scrapes = asyncio.run(scrape_loop(port, proc.pid, args.scrape, until))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        events = json.loads(out_path.read_text())
    ms = [s.ms for s in scrapes]
    print(f"{len(ms)} scrapes: p50 {pct(ms, 50):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms")
    gcs = events["gc"]
    for generation in (0, 1, 2):
        pauses = [float(e[1]) for e in gcs if e[2] == generation]
        if pauses:
            print(f"GC gen {generation}: {len(pauses)} passes, p50 {pct(pauses, 50):.2f} ms, max {max(pauses):.2f} ms")
    slow = events["slow"]
    print(f"loop callbacks over {args.slow_ms:g} ms: {len(slow)}")
    for e in sorted(slow, key=lambda e: -float(e[1]))[:8]:
        print(f"  {float(e[1]):6.1f} ms (loop thread on CPU {float(e[3]):.1f} ms)  {e[2]}")
    calm = [s.ms for s in scrapes if s.run_queue_ms < 1.0]
    if calm:
        print(
            f"{len(calm)} scrapes during which no exporter thread waited 1 ms for a CPU: "
            f"p50 {pct(calm, 50):.1f} ms, p99 {pct(calm, 99):.1f} ms, max {max(calm):.1f} ms"
        )
    for s in sorted(scrapes, key=lambda s: -s.ms)[: args.explain]:
        end = s.start + s.ms / 1000
        print(f"scrape {s.ms:.1f} ms: exporter threads waited {s.run_queue_ms:.1f} ms for a CPU")
        for e in overlapping(gcs, s.start, end):
            if float(e[1]) >= 0.5:
                print(f"    GC gen {e[2]} {float(e[1]):.1f} ms on {e[3]}")
        for e in overlapping(slow, s.start, end):
            print(f"    loop callback {float(e[1]):.1f} ms (on CPU {float(e[3]):.1f} ms): {e[2]}")


if __name__ == "__main__":
    main()
