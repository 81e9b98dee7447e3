"""CPU time to ingest one big neuron-monitor line, next to plain json.loads of the same line.

The line is shaped like the CloudWatch 32-runtime fixture on a trn1n.32xlarge (~1.5 MB): every
runtime lists all 32 cores, breaks its memory down per core and has 32 loaded models. json.loads
is the floor: the parser must build the document anyway. Target: ingest <= 2x the floor.

    .venv/bin/python bench/bench_neuron_parse.py [--runs 40] [--write-docs]
    .venv/bin/python bench/bench_neuron_parse.py --scrape [--seconds 20] [--root CHECKOUT ...]

`--write-docs` puts the table under "## Neuron line ingest" in docs/benchmarks.md (the section
is replaced when present, appended otherwise; the rest of the file is left alone).

`--loop-stalls` runs the Neuron source in this process on such a stream, alternately parsing on
its worker thread and, as before, on the event loop, and prints how long the loop stalls (a
1 ms timer firing over 4 ms late) in each case: same process, machine and load, so the
difference is where the parse runs.

`--scrape` measures what a scraper sees instead: the exporter (from each CHECKOUT given, default
this one) runs with a neuron-monitor that prints that line every `--line-every` seconds, while
`--scrapers` clients per exporter scrape /metrics every `--scrape-every` seconds; it prints the
scrape latency percentiles. Several checkouts (e.g. before and after a change) run side by side,
so a shared, busy machine loads them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import cpu_seconds_precise, free_port, memory_kib, neuron_parser_child  # noqa: E402
from exporter.sources.neuron_cores import CoreTracker  # noqa: E402
from exporter.sources.neuron_parse import parse_line  # noqa: E402
from exporter.sources.neuron_wire import HEADER, answer, decode, payload_length  # noqa: E402
from exporter.sources.procfs import ProcessFacts  # noqa: E402

HEADING = "## Neuron line ingest"
CORES = 32
RUNTIMES = 32
# Subgraphs per loaded model; 4 brings the line to the ~1.5 MB of the CloudWatch fixture.
SUBGRAPHS = 4
VCPUS = 128


def _latency(base: float) -> dict[str, float]:
    return {
        p: base * f
        for p, f in (("p0", 1.0), ("p1", 1.1), ("p25", 1.2), ("p50", 1.3), ("p75", 1.4), ("p99", 2.0), ("p100", 3.1))
    }


def _cpu() -> dict[str, float]:
    return {"user": 51.31, "nice": 0, "system": 6.21, "idle": 42.48, "io_wait": 0, "irq": 0, "soft_irq": 0}


def big_line(runtimes: int = RUNTIMES, cores: int = CORES) -> bytes:
    """A trn1n.32xlarge line with `runtimes` runtimes, each listing all `cores` cores."""
    data = []
    for r in range(runtimes):
        own = r % cores
        in_use = {
            str(c): {
                "neuroncore_utilization": 87.5 if c == own else 0,
                "flops": 123456789012 if c == own else 0,
                "effective_flops": 0,
            }
            for c in range(cores)
        }
        per_core = {
            str(c): {
                "constants": 1048576,
                "model_code": 100752896 if c == own else 0,
                "model_shared_scratchpad": 0,
                "runtime_memory": 0,
                "tensors": 9912852,
            }
            for c in range(cores)
        }
        models = [
            {
                "name": f"2.2.0.73+0af5a171c-/neuronxcc-model{m}",
                "uuid": f"{r:016x}{m:016x}",
                "model_id": 10000 + m,
                "is_running": m == 0,
                "subgraphs": {
                    f"sg_{g:02d}": {
                        "memory_used_bytes": {
                            "host": 20480,
                            "neuron_device": 24064,
                            "usage_breakdown": {
                                "host": {"application_memory": 20480, "constants": 0, "dma_buffers": 0, "tensors": 0},
                                "neuron_device": {
                                    "constants": 0,
                                    "model_code": 24064,
                                    "runtime_memory": 0,
                                    "tensors": 0,
                                },
                            },
                        },
                        "neuroncore_index": own % 2,
                        "neuron_device_index": own // 2,
                    }
                    for g in range(SUBGRAPHS)
                },
            }
            for m in range(32)
        ]
        data.append(
            {
                "pid": 400000 + r,
                "neuron_runtime_tag": str(300 + r),
                "error": "",
                "report": {
                    "execution_stats": {
                        "period": 4.999666547,
                        "error_summary": {
                            "generic": 0,
                            "numerical": 0,
                            "transient": 0,
                            "model": 0,
                            "runtime": 0,
                            "hardware": 0,
                        },
                        "execution_summary": {
                            "completed": 40,
                            "completed_with_err": 0,
                            "completed_with_num_err": 0,
                            "timed_out": 0,
                            "incorrect_input": 0,
                            "failed_to_queue": 0,
                        },
                        "latency_stats": {"total_latency": _latency(0.011), "device_latency": _latency(0.010)},
                        "error": "",
                    },
                    "memory_used": {
                        "period": 4.999671285,
                        "neuron_runtime_used_bytes": {
                            "host": 9043968,
                            "neuron_device": 3541303936,
                            "usage_breakdown": {
                                "host": {
                                    "application_memory": 655360,
                                    "constants": 0,
                                    "dma_buffers": 8388608,
                                    "tensors": 0,
                                },
                                "neuroncore_memory_usage": per_core,
                            },
                        },
                        "loaded_models": models,
                        "error": "",
                    },
                    "neuron_runtime_vcpu_usage": {
                        "period": 4.999647382,
                        "vcpu_usage": {"user": 0, "system": 0},
                        "error": "",
                    },
                    "neuroncore_counters": {"period": 4.999667932, "neuroncores_in_use": in_use, "error": ""},
                },
            }
        )
    document = {
        "neuron_runtime_data": data,
        "system_data": {
            "neuron_hw_counters": {
                "period": 5.000142057,
                "neuron_devices": [
                    {
                        "neuron_device_index": d,
                        "mem_ecc_corrected": 0,
                        "mem_ecc_uncorrected": 0,
                        "sram_ecc_uncorrected": 0,
                        "sram_ecc_corrected": 0,
                    }
                    for d in range(16)
                ],
                "error": "",
            },
            "vcpu_usage": {
                "period": 4.999737702,
                "average_usage": _cpu(),
                "usage_data": {str(c): _cpu() for c in range(VCPUS)},
                "context_switch_count": 171386,
                "error": "",
            },
            "memory_info": {
                "period": 4.99972,
                "memory_total_bytes": 532523487232,
                "memory_used_bytes": 81207975936,
                "swap_total_bytes": 0,
                "swap_used_bytes": 0,
                "error": "",
            },
        },
        "instance_info": {
            "instance_id": "i-09db9b55e0095612f",
            "instance_type": "trn1n.32xlarge",
            "instance_availability_zone": "us-east-1c",
            "instance_region": "us-east-1",
            "error": "",
        },
        "neuron_hardware_info": {"neuron_device_count": 16, "neuroncore_per_device_count": 2, "error": ""},
    }
    return json.dumps(document, separators=(",", ":")).encode()


class _Procs:
    def facts(self, pid: int) -> ProcessFacts | None:
        return ProcessFacts(user="bench", command="python")


def cpu_ms(work: Callable[[], object], runs: int) -> list[float]:
    """CPU milliseconds (process time) of each run, after two warm-up runs."""
    for _ in range(2):
        work()
    out = []
    for _ in range(runs):
        start = time.process_time_ns()
        work()
        out.append((time.process_time_ns() - start) / 1e6)
    return out


def measure(runs: int) -> tuple[int, dict[str, list[float]]]:
    """Line size and per-run CPU ms of json.loads, parse_line and parse + accounting."""
    line = big_line()
    tracker = CoreTracker("bench")
    procs = _Procs()

    def ingest() -> None:
        tracker.ingest(parse_line(line))

    # What the event loop does per line since the parse moved to the child: decode its answer, account.
    frame = answer(line)
    kind, _ = payload_length(frame[: HEADER.size])
    record = decode(kind, frame[HEADER.size :])
    results = {
        "json.loads (floor)": cpu_ms(lambda: json.loads(line), runs),
        "parse_line": cpu_ms(lambda: parse_line(line), runs),
        "ingest = parse_line + core accounting": cpu_ms(ingest, runs),
        "decode the parser child's answer (on the loop)": cpu_ms(lambda: decode(kind, frame[HEADER.size :]), runs),
        "core accounting of one record (on the loop)": cpu_ms(lambda: tracker.ingest(record), runs),
        "readings (once per poll, 32 cores)": cpu_ms(lambda: tracker.readings(procs), runs),
    }
    return len(line), results


def table(size: int, results: dict[str, list[float]], runs: int) -> str:
    floor = statistics.median(results["json.loads (floor)"])
    lines = [
        f"One {size / 1e6:.2f} MB line ({RUNTIMES} runtimes x {CORES} cores, trn1n.32xlarge shape); "
        f"CPU time per line, median of {runs} runs; Python {platform.python_version()}, stdlib json.",
        "",
        "| step | median ms | min ms | x floor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, values in results.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.1f} | {min(values):.1f} | {median / floor:.2f} |")
    return "\n".join(lines)


def write_docs(body: str) -> Path:
    """Replace or append the section in docs/benchmarks.md."""
    path = ROOT / "docs" / "benchmarks.md"
    section = f"{HEADING}\n\nMeasured with `python bench/bench_neuron_parse.py --write-docs`. Target: ingest <= 2x the floor.\n\n{body}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if HEADING in text:
        before, rest = text.split(HEADING, 1)
        after = rest.find("\n## ")
        tail = rest[after + 1 :] if after >= 0 else ""
        text = before + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
    return path


STALL_MS = 4.0


PARSE_PLACES = ("parser child process", "worker thread", "event loop", "no stream (the machine alone)")


async def _stalls(monitor: Path, seconds: float, place: str) -> list[float]:
    """Loop stalls (ms) while the source reads the stream, parsing in `place` (one of PARSE_PLACES)."""
    from exporter.clock import SystemClock
    from exporter.config.model import NeuronSettings
    from exporter.sources.neuron import NeuronSource

    if place == PARSE_PLACES[-1]:
        return await _late_timers(seconds)
    settings = NeuronSettings(monitor_path=str(monitor), period_seconds=1.0)
    src = NeuronSource(settings, SystemClock(), _Procs(), parse_in_child=place == PARSE_PLACES[0])
    await src.start()
    if place == "event loop":
        # Without its worker the source parses inline, on the loop: the behaviour before the worker.
        worker, src._worker = src._worker, None
        assert worker is not None
        worker.shutdown(wait=False)
    try:
        while src.records < 2:
            await asyncio.sleep(0.01)
        return await _late_timers(seconds)
    finally:
        await src.stop()


async def _late_timers(seconds: float) -> list[float]:
    """How late (ms) a 1 ms timer fired, each time it was over STALL_MS late, for `seconds`."""
    stalls: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late = (time.perf_counter() - start) * 1000 - 1.0
        if late > STALL_MS:
            stalls.append(late)
    return stalls


def loop_stalls(seconds: float, rounds: int, line_every: float) -> dict[str, list[float]]:
    """Loop stalls with the parse in each of PARSE_PLACES, `rounds` alternating runs each."""
    out: dict[str, list[float]] = {place: [] for place in PARSE_PLACES}
    with tempfile.TemporaryDirectory(prefix="bench-neuron-") as tmp:
        monitor = _stream_script(Path(tmp), line_every)
        for _ in range(rounds):
            for place in PARSE_PLACES:
                out[place] += asyncio.run(_stalls(monitor, seconds, place))
    return out


def _stream_script(directory: Path, line_every: float) -> Path:
    line = directory / "line.json"
    line.write_bytes(big_line() + b"\n")
    monitor = directory / "neuron-monitor"
    monitor.write_text(f"#!/bin/sh\nwhile :; do cat {line}; sleep {line_every}; done\n", encoding="utf-8")
    monitor.chmod(0o755)
    return monitor


def _percentiles(values: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    return pct(50), pct(90), pct(99), ordered[-1]


NEURON_UP = 'accel_exporter_collector_success{collector="neuron"} 1'


def _get(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"/metrics answered {response.status}")
    return body


def _scrape_loop(port: int, deadline: float, every: float, out: list[float]) -> None:
    # Open loop, like Prometheus: a scrape every `every` seconds whatever the last one took, so a
    # scrape lands inside a parse as often as the loop is blocked (a closed loop would mostly miss it).
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    due = time.monotonic()
    while due < deadline:
        start = time.perf_counter()
        _get(conn)
        out.append((time.perf_counter() - start) * 1000)
        due += every
        time.sleep(max(0.0, due - time.monotonic()))
    conn.close()


def _wait_for_neuron(port: int, proc: subprocess.Popen[bytes], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the exporter exited with status {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/metrics")
            if NEURON_UP in conn.getresponse().read().decode():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the neuron collector did not succeed within {within:g} s")


@dataclass(frozen=True)
class StreamRun:
    """What one exporter did during the stream: scrape latencies, CPU over the window, memory."""

    latencies_ms: list[float]
    exporter_cpu_s: float
    child_cpu_s: float  # the parser child's, 0 without one
    window_s: float
    exporter_rss_kib: dict[str, int]
    child_rss_kib: dict[str, int]  # empty without a parser child


def _cpu_seconds(pid: int | None) -> float:
    return cpu_seconds_precise(pid) if pid is not None else 0.0


def scrape_during_stream(
    roots: list[Path], seconds: float, scrapers: int, line_every: float, scrape_every: float
) -> list[StreamRun]:
    """Per checkout, their exporters side by side, each reading a big line every `line_every` s."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-neuron-") as tmp:
        monitor = _stream_script(Path(tmp), line_every)
        try:
            ports = []
            for root in roots:
                port = free_port()
                argv = [sys.executable, "-m", "exporter", "--collector.neuron", "--no-collector.nvml"]
                argv += ["--neuron.monitor-path", str(monitor), "--collector.interval", "1s"]
                argv += ["--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn"]
                env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
                env["PYTHONPATH"] = str(root)
                procs.append(subprocess.Popen(argv, cwd=root, env=env))
                ports.append(port)
            for port, proc in zip(ports, procs, strict=True):
                _wait_for_neuron(port, proc)
            children = [neuron_parser_child(proc.pid) for proc in procs]
            deadline = time.monotonic() + seconds
            results: list[list[list[float]]] = [[[] for _ in range(scrapers)] for _ in roots]
            threads = [
                threading.Thread(target=_scrape_loop, args=(port, deadline, scrape_every, out))
                for port, outs in zip(ports, results, strict=True)
                for out in outs
            ]
            started = time.perf_counter()
            cpu_before = [
                (_cpu_seconds(proc.pid), _cpu_seconds(child)) for proc, child in zip(procs, children, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            window = time.perf_counter() - started
            runs = []
            for proc, child, (e0, c0), outs in zip(procs, children, cpu_before, results, strict=True):
                runs.append(
                    StreamRun(
                        [ms for out in outs for ms in out],
                        _cpu_seconds(proc.pid) - e0,
                        _cpu_seconds(child) - c0,
                        window,
                        memory_kib(proc.pid),
                        memory_kib(child) if child is not None else {},
                    )
                )
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return runs


def scrape_table(
    roots: list[Path], runs: list[StreamRun], scrapers: int, line_every: float, scrape_every: float
) -> str:
    """Scrape latency percentiles, CPU and memory, one row per checkout."""
    lines = [
        f"One {len(big_line()) / 1e6:.2f} MB line every {line_every:g} s; {scrapers} clients per exporter, "
        f"each scraping every {scrape_every:g} s; Python {platform.python_version()}.",
        "",
        "| checkout | scrapes | p50 ms | p90 ms | p99 ms | max ms | exporter CPU ms/s | parser child CPU ms/s "
        "| exporter RSS / peak MiB | parser child RSS / peak MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for root, run in zip(roots, runs, strict=True):
        p50, p90, p99, top = _percentiles(run.latencies_ms)
        rss = run.exporter_rss_kib
        child = run.child_rss_kib
        child_rss = f"{child['VmRSS'] / 1024:.1f} / {child['VmHWM'] / 1024:.1f}" if child else "—"
        lines.append(
            f"| {root} | {len(run.latencies_ms)} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {top:.1f} "
            f"| {1000 * run.exporter_cpu_s / run.window_s:.1f} | {1000 * run.child_cpu_s / run.window_s:.1f} "
            f"| {rss['VmRSS'] / 1024:.1f} / {rss['VmHWM'] / 1024:.1f} | {child_rss} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--scrape", action="store_true", help="measure scrape latency during a big-line stream")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scrapers", type=int, default=2)
    parser.add_argument("--line-every", type=float, default=0.5)
    parser.add_argument("--scrape-every", type=float, default=0.02)
    parser.add_argument("--root", type=Path, action="append", help="checkout whose exporter to run (repeatable)")
    parser.add_argument("--loop-stalls", action="store_true", help="loop stalls, parse on the worker vs the loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="--scrape: runs, each printed as its own table")
    args = parser.parse_args()
    if args.loop_stalls:
        print(
            f"Event-loop stalls over {STALL_MS:g} ms, one {len(big_line()) / 1e6:.2f} MB line every {args.line_every:g} s; "
            f"{args.rounds} alternating runs of {args.seconds:g} s each; Python {platform.python_version()}.\n"
        )
        print("| parse on | stalls | p50 ms | p90 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, stalls in loop_stalls(args.seconds, args.rounds, args.line_every).items():
            if not stalls:
                print(f"| {name} | 0 | — | — | — | — |")
                continue
            p50, p90, p99, top = _percentiles(stalls)
            print(f"| {name} | {len(stalls)} | {p50:.1f} | {p90:.1f} | {p99:.1f} | {top:.1f} |")
        return 0
    if args.scrape:
        roots = [root.resolve() for root in args.root or [ROOT]]
        for _ in range(args.repeat):
            runs = scrape_during_stream(roots, args.seconds, args.scrapers, args.line_every, args.scrape_every)
            print(scrape_table(roots, runs, args.scrapers, args.line_every, args.scrape_every), flush=True)
        return 0
    size, results = measure(args.runs)
    body = table(size, results, args.runs)
    print(body)
    ratio = statistics.median(results["ingest = parse_line + core accounting"]) / statistics.median(
        results["json.loads (floor)"]
    )
    print(f"\ningest / floor = {ratio:.2f} ({'within' if ratio <= 2.0 else 'OVER'} the 2x target)")
    if args.write_docs:
        print(f"wrote {write_docs(body)}")
    return 0 if ratio <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
