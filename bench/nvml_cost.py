"""What the NVML source costs on a real driver: memory by layer, each NVML call, and whole polls.

Run on a host with an NVIDIA GPU (needs nvidia-ml-py, prometheus-client, aiohttp, pyyaml):

    python3 bench/nvml_cost.py                 # about 40 s
    python3 bench/nvml_cost.py --polls 60 --with-load

1. RSS after each layer is loaded: the interpreter, the exporter's imports, pynvml, nvmlInit.
2. Each NVML call the source makes, timed alone: wall and thread CPU (median of `--calls`),
   with the GPM calls (sample, metrics) where GPU 0 has GPM (Hopper and later).
3. The production `NvmlSource` polled every `--interval` (1 s): thread CPU and wall per poll,
   split into time inside NVML and time in our own Python, and the share of a core that makes,
   scaled to an 8-GPU host.
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


def gpm_calls(pynvml: Any, repeat: int) -> None:
    """Each GPM call alone on GPU 0 (and its first MIG instance), where the GPU has GPM."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    try:
        supported = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
    except (pynvml.NVMLError, AttributeError) as exc:
        print(f"\n--- GPM: not available ({type(exc).__name__}: {exc}) ---")
        return
    if not supported:
        print("\n--- GPM: this GPU has none (Hopper or later needed) ---")
        return
    first, second = pynvml.nvmlGpmSampleAlloc(), pynvml.nvmlGpmSampleAlloc()
    pynvml.nvmlGpmSampleGet(handle, first)
    metric_ids = (
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL,
        pynvml.NVML_GPM_METRIC_SM_UTIL,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
    )

    def metrics() -> Any:
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(metric_ids)
        request.sample1, request.sample2 = first, second
        for i, metric in enumerate(metric_ids):
            request.metrics[i].metricId = metric
        return pynvml.nvmlGpmMetricsGet(request)

    calls: dict[str, Callable[[], Any]] = {
        "GpmQueryDeviceSupport": lambda: pynvml.nvmlGpmQueryDeviceSupport(handle),
        "GpmSampleGet": lambda: pynvml.nvmlGpmSampleGet(handle, second),
        "GpmMetricsGet (5 metrics)": metrics,
    }
    try:
        current, _ = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:
        current = 0
    if current == pynvml.NVML_DEVICE_MIG_ENABLE:
        try:
            gi = int(pynvml.nvmlDeviceGetGpuInstanceId(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0)))
            calls["GpmMigSampleGet"] = lambda: pynvml.nvmlGpmMigSampleGet(handle, gi, second)
        except pynvml.NVMLError as exc:
            print("  (no MIG instance to sample:", exc, ")")
    print(f"\n--- GPM calls alone, GPU 0, median of {repeat} ---")
    try:
        for name, call in calls.items():
            wall, cpu, error = timed(call, repeat)
            print(f"  {name:34} {wall:8.3f} {cpu:8.3f}  {error}")
    finally:
        pynvml.nvmlGpmSampleFree(first)
        pynvml.nvmlGpmSampleFree(second)


def polls(pynvml: Any, count: int, with_load: bool, interval: float = 1.0) -> None:
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
            time.sleep(max(0.0, interval - wall))
        processes = sum(len(r.processes) for r in report.devices)
        print(
            f"\n--- NvmlSource poll at {interval:g} s, {count} polls, {len(report.devices)} device(s), "
            f"{processes} process(es) ---"
        )
        for label, index in (("wall", 0), ("thread CPU", 1), ("  of which in NVML (wall)", 2), ("  in NVML (CPU)", 3)):
            values = [r[index] * 1000 for r in rows[1:]]
            print(f"  {label:26} mean {statistics.mean(values):7.3f} ms  max {max(values):7.3f} ms")
        print(f"  NVML calls per poll: mean {statistics.mean(r[4] for r in rows[1:]):.1f}")
        share = statistics.mean(r[1] for r in rows[1:]) / interval
        gpus = sum(1 for r in report.devices if r.identity.kind == "gpu") or 1
        print(
            f"  share of a core at this interval: {100 * share:.3f} % for {gpus} GPU(s), "
            f"{100 * share * 8 / gpus:.3f} % scaled to 8 GPUs"
        )
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
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls (5 is the default interval)")
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
        gpm_calls(pynvml, args.calls)
    finally:
        pynvml.nvmlShutdown()
    polls(pynvml, args.polls, args.with_load, args.interval)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
