"""What the NVML source costs on a real driver: memory by layer, each NVML call, and whole polls.

Run on a host with an NVIDIA GPU (needs nvidia-ml-py, prometheus-client, aiohttp, pyyaml):

    python3 bench/nvml_cost.py                 # about 40 s
    python3 bench/nvml_cost.py --polls 60 --with-load

1. RSS after each layer is loaded: the interpreter, the exporter's imports, pynvml, nvmlInit.
2. Each NVML call the source makes, timed alone: wall and thread CPU (median of `--calls`).
3. The production `NvmlSource` polled once a second: thread CPU and wall per poll, split into
   time inside NVML and time in our own Python.
With `--with-load`, a PyTorch process holds GPU 0 during step 3, so the process path is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HOLD_SCRIPT = (
    "import torch, time; x = torch.ones(1 << 28, device='cuda:0'); time.sleep(float(__import__('sys').argv[1]))"
)


def rss() -> str:
    """VmRSS with its anonymous and file-backed parts, in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return f"RSS {fields['VmRSS']:.1f} MiB (anon {fields['RssAnon']:.1f}, file {fields['RssFile']:.1f})"


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float, str]:
    """Median wall and thread-CPU milliseconds of `call`, and its error if it raised."""
    walls, cpus = [], []
    error = ""
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            call()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000, error


class CountingNvml:
    """The real pynvml module, with the time spent inside its calls added up."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.wall = 0.0
        self.cpu = 0.0
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._module, name)
        if not name.startswith("nvml") or not callable(target) or isinstance(target, type):
            return target

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return target(*args, **kwargs)
            finally:
                self.cpu += time.thread_time() - cpu
                self.wall += time.perf_counter() - wall
                self.calls += 1

        return wrapper


def per_call(pynvml: Any, repeat: int) -> None:
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    events = pynvml.nvmlEventSetCreate()
    try:
        pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, events)
    except pynvml.NVMLError as exc:
        print("  (XID events not registered:", exc, ")")
    last = [0]

    def samples() -> None:
        _, got = pynvml.nvmlDeviceGetSamples(handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, last[0])
        last[0] = max([last[0], *(int(s.timeStamp) for s in got)])

    def wait_event() -> None:
        with contextlib.suppress(pynvml.NVMLError_Timeout):
            pynvml.nvmlEventSetWait_v2(events, 0)

    fields = [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]
    calls: dict[str, Callable[[], Any]] = {
        "GetSamples (all buffered)": lambda: pynvml.nvmlDeviceGetSamples(
            handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0
        ),
        "GetSamples (since last)": samples,
        "GetUtilizationRates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
        "GetMemoryInfo v2": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
        "GetMemoryInfo v1": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle),
        "GetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
        "GetTotalEnergyConsumption": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
        "GetFieldValues (power+energy)": lambda: pynvml.nvmlDeviceGetFieldValues(handle, fields),
        "GetComputeRunningProcesses v3": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses_v3(handle),
        "GetGraphicsRunningProcesses v3": lambda: pynvml.nvmlDeviceGetGraphicsRunningProcesses_v3(handle),
        "EventSetWait_v2 (0 ms)": wait_event,
        "GetUUID": lambda: pynvml.nvmlDeviceGetUUID(handle),
        "GetCount": pynvml.nvmlDeviceGetCount,
        "GetMigMode": lambda: pynvml.nvmlDeviceGetMigMode(handle),
    }
    print(f"\n--- each call alone, GPU 0, median of {repeat} ---")
    print(f"  {'call':34} {'wall ms':>8} {'cpu ms':>8}")
    for name, call in calls.items():
        wall, cpu, error = timed(call, repeat)
        print(f"  {name:34} {wall:8.3f} {cpu:8.3f}  {error}")
    if hasattr(pynvml, "nvmlEventSetFree"):
        pynvml.nvmlEventSetFree(events)


def polls(pynvml: Any, count: int, with_load: bool) -> None:
    from exporter.clock import SystemClock
    from exporter.sources.nvml import NvmlSource
    from exporter.sources.procfs import ProcFs

    counting = CountingNvml(pynvml)
    source = NvmlSource(lambda: counting, SystemClock(), ProcFs())
    source._try_init(source._start_errors)  # the worker thread's job; here on this thread
    holder = None
    if with_load:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(count + 30)])
        time.sleep(8)  # CUDA context up and listed by the driver
    try:
        rows = []
        for _ in range(count):
            counting.wall = counting.cpu = 0.0
            counting.calls = 0
            wall, cpu = time.perf_counter(), time.thread_time()
            report = source._poll_sync()
            cpu = time.thread_time() - cpu
            wall = time.perf_counter() - wall
            rows.append((wall, cpu, counting.wall, counting.cpu, counting.calls))
            time.sleep(max(0.0, 1.0 - wall))
        processes = sum(len(r.processes) for r in report.devices)
        print(
            f"\n--- NvmlSource poll at 1 s, {count} polls, {len(report.devices)} device(s), {processes} process(es) ---"
        )
        for label, index in (("wall", 0), ("thread CPU", 1), ("  of which in NVML (wall)", 2), ("  in NVML (CPU)", 3)):
            values = [r[index] * 1000 for r in rows[1:]]
            print(f"  {label:26} mean {statistics.mean(values):7.3f} ms  max {max(values):7.3f} ms")
        print(f"  NVML calls per poll: mean {statistics.mean(r[4] for r in rows[1:]):.1f}")
        print(f"  errors in the last report: {dict(report.errors) or 'none'}")
        _, buffered = pynvml.nvmlDeviceGetSamples(
            pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0
        )
        stamps = sorted(int(sample.timeStamp) for sample in buffered)
        print(f"  sample buffer now: {len(stamps)} samples over {(stamps[-1] - stamps[0]) / 1e6:.1f} s")
        print("  after polling:", rss())
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        source._shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="repetitions of each NVML call")
    parser.add_argument("--polls", type=int, default=20, help="polls of the source, one a second")
    parser.add_argument("--with-load", action="store_true", help="hold GPU 0 with a PyTorch process while polling")
    args = parser.parse_args()
    print("python", sys.version.split()[0], "| interpreter:", rss())
    import aiohttp  # noqa: F401
    import prometheus_client  # noqa: F401

    import exporter.daemon  # noqa: F401

    print("after the exporter's imports:", rss())
    import pynvml

    print("after import pynvml:", rss())
    pynvml.nvmlInit()
    print("after nvmlInit:", rss())
    try:
        print("driver", pynvml.nvmlSystemGetDriverVersion(), "| GPUs", pynvml.nvmlDeviceGetCount())
        per_call(pynvml, args.calls)
    finally:
        pynvml.nvmlShutdown()
    polls(pynvml, args.polls, args.with_load)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
