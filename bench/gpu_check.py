"""Real-GPU check (`make gpu-check`): the exporter against the real NVML, on a host with NVIDIA GPUs.

It starts the exporter from this checkout, scrapes it, prints the device lines, then proves that
`accel_busy_seconds_total` of GPU 0 stays flat while the GPU is idle and rises under a short load
(PyTorch or CuPy, when installed). On a GPU with GPM (Hopper and later) it then proves that SM
activity measures work, not kernel time: a large matmul shows SM activity near its utilization,
and a single-block spinning kernel shows utilization near 100 % with SM activity near
1/number-of-SMs. Needs only nvidia-ml-py, prometheus-client, aiohttp and pyyaml.
Exit status: 0 proven, 1 failed, 2 no NVIDIA driver or binding here, 3 no load library (device lines
printed, no load proof).
Runs in well under 3 minutes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import cpu_seconds, free_port, memory_kib  # noqa: E402
from exporter.sources.nvml import SAMPLES_READ_SECONDS  # noqa: E402
from exporter.sources.nvml_gpm import GPM_READ_SECONDS  # noqa: E402

IDLE_SECONDS = 10.0
LOAD_SECONDS = 20.0
GPM_LOAD_SECONDS = 15.0
# A matmul keeps nearly every SM busy while it runs: SM activity at least this share of utilization.
MATMUL_SM_SHARE = 0.7
# One block runs on one SM: SM activity at most this many SMs' worth, utilization at least this.
SPIN_MAX_SMS = 3.0
SPIN_MIN_UTILIZATION = 0.8
SAMPLE = re.compile(r"^(accel_[a-z_]+)\{([^}]*)\} (\S+)$")

LOAD_SCRIPT = r"""
import sys, time
seconds = float(sys.argv[1])
try:
    import torch
    a = torch.randn(4096, 4096, device="cuda:0")
    b = torch.randn(4096, 4096, device="cuda:0")
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
    print("load: torch matmul on cuda:0 for", seconds, "s")
except ImportError:
    import cupy as cp
    a = cp.random.rand(4096, 4096, dtype=cp.float32)
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            c = a @ a
        cp.cuda.Device(0).synchronize()
    print("load: cupy matmul on device 0 for", seconds, "s")
"""


SPIN_SCRIPT = r"""
import sys, time
seconds = float(sys.argv[1])
try:
    import torch
    torch.cuda.init()
    end = time.time() + seconds
    while time.time() < end:
        torch.cuda._sleep(50_000_000)  # one thread in one block, spinning on clock64()
        torch.cuda.synchronize()
    print("load: one spinning block (torch.cuda._sleep) on cuda:0 for", seconds, "s")
except ImportError:
    import cupy as cp
    spin = cp.RawKernel(
        'extern "C" __global__ void spin(long long n) { long long s = clock64(); while (clock64() - s < n) {} }', "spin"
    )
    end = time.time() + seconds
    while time.time() < end:
        spin((1,), (1,), (cp.int64(50_000_000),))
        cp.cuda.Device(0).synchronize()
    print("load: one spinning block (cupy RawKernel) on device 0 for", seconds, "s")
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, metric: str, device: str) -> float | None:
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == metric and f'device="{device}"' in match.group(2):
            return float(match.group(3))
    return None


def activity(port: int, device: str) -> tuple[float, float]:
    """Busy and SM-active seconds of `device` so far."""
    text = scrape(port)
    return (
        value(text, "accel_busy_seconds_total", device) or 0.0,
        value(text, "accel_sm_active_seconds_total", device) or 0.0,
    )


def measure_gpm(port: int, device: str, run_load: Callable[[], None], seconds: float) -> tuple[float, float]:
    """Utilization and SM activity of `device` over one load of `seconds`, run by `run_load`.

    Both counters are read before the load and once the next GPM and sample-buffer reads have
    covered its end; the load is the only work in between, so its seconds are the denominator.
    """
    busy0, sm0 = activity(port, device)
    run_load()
    time.sleep(max(GPM_READ_SECONDS, SAMPLES_READ_SECONDS) + 1.5)
    busy1, sm1 = activity(port, device)
    return (busy1 - busy0) / seconds, (sm1 - sm0) / seconds


def run_script(script: str, seconds: float) -> Callable[[], None]:
    """A load: `script` in a fresh Python for `seconds`, its first output line printed."""

    def run() -> None:
        load = subprocess.run(
            [sys.executable, "-c", script, str(seconds)], capture_output=True, text=True, timeout=seconds + 120
        )
        print(load.stdout.strip() or load.stderr.strip()[-500:])

    return run


def judge_matmul(utilization: float, sm: float) -> tuple[bool, str]:
    """A large matmul: SM activity near its utilization."""
    ok = utilization > 0.5 and sm >= MATMUL_SM_SHARE * utilization
    verdict = "PASS" if ok else "FAIL"
    return (
        ok,
        f"{verdict}: matmul: utilization {utilization:.3f}, SM activity {sm:.3f} (want >= {MATMUL_SM_SHARE:.0%} of utilization)",
    )


def judge_spin(utilization: float, sm: float, sms: int) -> tuple[bool, str]:
    """One spinning block: utilization near 100 %, SM activity near 1/number-of-SMs."""
    ok = utilization >= SPIN_MIN_UTILIZATION and sm <= SPIN_MAX_SMS / sms
    verdict = "PASS" if ok else "FAIL"
    return ok, (
        f"{verdict}: single-block spin: utilization {utilization:.3f}, SM activity {sm:.4f} "
        f"(1/{sms} SMs = {1 / sms:.4f}; want utilization >= {SPIN_MIN_UTILIZATION} and SM activity <= {SPIN_MAX_SMS / sms:.4f})"
    )


def gpm_support() -> tuple[bool, int, str]:
    """Whether GPU 0 has GPM, its SM count, and why not."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        sms = int(pynvml.nvmlDeviceGetAttributes_v2(handle).multiprocessorCount)
        if not hasattr(pynvml, "nvmlGpmQueryDeviceSupport"):
            return False, sms, "nvidia-ml-py has no GPM calls"
        try:
            supported = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except pynvml.NVMLError as exc:
            return False, sms, str(exc)
        return supported, sms, "" if supported else "the driver says this GPU has no GPM (Hopper or later)"
    finally:
        pynvml.nvmlShutdown()


def prove_gpm(port: int) -> bool:
    """The SM activity proof on GPU 0; True when it passed or GPM is not there to prove."""
    try:
        supported, sms, why = gpm_support()
    except Exception as exc:
        print(f"GPM: cannot ask the driver ({type(exc).__name__}: {exc}): SM activity checks skipped")
        return True
    if not supported:
        print(f"GPM: not on this GPU ({why}): SM activity checks skipped")
        return True
    print(f"\n--- GPM on nvidia0 ({sms} SMs) ---")
    load = run_script(LOAD_SCRIPT, GPM_LOAD_SECONDS)
    ok_matmul, line = judge_matmul(*measure_gpm(port, "nvidia0", load, GPM_LOAD_SECONDS))
    print(line)
    spin = run_script(SPIN_SCRIPT, GPM_LOAD_SECONDS)
    ok_spin, line = judge_spin(*measure_gpm(port, "nvidia0", spin, GPM_LOAD_SECONDS), sms)
    print(line)
    return ok_matmul and ok_spin


def has_load_library() -> bool:
    for module in ("torch", "cupy"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            return True
    return False


def probe_driver() -> None:
    """Print which of the NVML calls the exporter relies on this driver answers, for GPU 0."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        print("driver", pynvml.nvmlSystemGetDriverVersion(), "| GPUs", pynvml.nvmlDeviceGetCount())
        calls = {
            "samples (GPU_UTILIZATION)": lambda: pynvml.nvmlDeviceGetSamples(
                handle, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0
            ),
            "utilization rates": lambda: pynvml.nvmlDeviceGetUtilizationRates(handle),
            "memory v2": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2),
            "power usage": lambda: pynvml.nvmlDeviceGetPowerUsage(handle),
            "total energy": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
            "compute processes": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle),
            "MIG mode": lambda: pynvml.nvmlDeviceGetMigMode(handle),
        }
        for name, call in calls.items():
            try:
                result = call()
                if name.startswith("samples"):
                    stamps = sorted(int(sample.timeStamp) for sample in result[1])
                    span = (stamps[-1] - stamps[0]) / 1e6 if stamps else 0.0
                    shown = f"{len(stamps)} samples over {span:.1f} s"
                else:
                    shown = str(result)[:80]
                print(f"  {name}: ok ({shown})")
            except pynvml.NVMLError as exc:
                print(f"  {name}: {exc}")
            except Exception as exc:  # a binding too old for the call
                print(f"  {name}: {type(exc).__name__}: {exc}")
    finally:
        pynvml.nvmlShutdown()


def main() -> int:
    try:
        probe_driver()
    except Exception as exc:
        print(f"no usable NVIDIA driver here ({type(exc).__name__}: {exc}): make gpu-check needs a GPU host")
        return 2
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "exporter",
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--collector.interval",
        "1s",
        "--no-collector.neuron",
    ]
    print("starting:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            print("FAIL: exporter not ready within 60 s")
            return 1
        time.sleep(2.5)
        text = scrape(port)
        print("\n--- device lines ---")
        for line in text.splitlines():
            if line.startswith(
                (
                    "accel_device_info",
                    "accel_device_up",
                    "accel_utilization_ratio",
                    "accel_memory_",
                    "accel_power_watts",
                    "accel_state{",
                    "accel_processes",
                    "accel_exporter_collector_success",
                    "accel_exporter_collector_duration_seconds",
                    "accel_exporter_errors_total",
                    "accel_instance_info",
                )
            ):
                print(line)
        if value(text, "accel_device_up", "nvidia0") != 1.0:
            print("FAIL: nvidia0 is not up")
            return 1
        before_idle = value(text, "accel_busy_seconds_total", "nvidia0")
        if before_idle is None:
            print("FAIL: no accel_busy_seconds_total for nvidia0")
            return 1
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(IDLE_SECONDS)
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        after_idle = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        idle_rate = (after_idle - before_idle) / IDLE_SECONDS
        print(
            f"\nbefore load: busy_seconds {before_idle:.3f} -> {after_idle:.3f} over {IDLE_SECONDS:.0f} s (utilization {idle_rate:.3f})"
        )
        print(
            f"exporter cost at a 1 s interval on the real driver: {100 * cpu_used / IDLE_SECONDS:.2f} % of a core, "
            f"RSS {memory_kib(proc.pid)['VmRSS'] / 1024:.1f} MiB"
        )
        if not has_load_library():
            print("no PyTorch or CuPy: device lines above, no load proof")
            return 3
        start = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, str(LOAD_SECONDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(LOAD_SECONDS / 2)
        print(f"\n--- during the load (pid {load.pid}) ---")
        for line in scrape(port).splitlines():
            if line.startswith(("accel_process", "accel_utilization_ratio", "accel_state{", "accel_power_watts")):
                print(line)
        out, err = load.communicate(timeout=LOAD_SECONDS + 60)
        print(out.strip() or err.strip()[-500:])
        time.sleep(SAMPLES_READ_SECONDS + 1.5)  # the next read of the sample buffer covers the whole load
        end = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        load_rate = (end - start) / LOAD_SECONDS
        print(
            f"during load: busy_seconds {start:.3f} -> {end:.3f} (+{end - start:.2f} s over a {LOAD_SECONDS:.0f} s load, utilization {load_rate:.3f})"
        )
        ok = load.returncode == 0 and load_rate > 0.5 and load_rate > idle_rate + 0.3
        print(
            "PASS: busy time rose during the load and not before" if ok else "FAIL: busy time did not rise as expected"
        )
        ok = prove_gpm(port) and ok
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"\nexporter exited with {proc.returncode}; last log lines:")
        print("\n".join((err or "").strip().splitlines()[-20:]))


if __name__ == "__main__":
    sys.exit(main())
