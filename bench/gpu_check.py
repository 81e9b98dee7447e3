"""Real-GPU check (`make gpu-check`): the exporter against the real NVML, on a host with NVIDIA GPUs.

It starts the exporter from this checkout, scrapes it, prints the device lines, then proves that
`accel_busy_seconds_total` of GPU 0 stays flat while the GPU is idle and rises under a short load
(PyTorch or CuPy, when installed). Needs only nvidia-ml-py, prometheus-client, aiohttp and pyyaml.
Exit status: 0 proven, 1 failed, 3 no load library (device lines printed, no load proof).
Runs in well under 3 minutes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDLE_SECONDS = 10.0
LOAD_SECONDS = 20.0
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def value(text: str, metric: str, device: str) -> float | None:
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == metric and f'device="{device}"' in match.group(2):
            return float(match.group(3))
    return None


def has_load_library() -> bool:
    for module in ("torch", "cupy"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            return True
    return False


def main() -> int:
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
        time.sleep(IDLE_SECONDS)
        after_idle = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        idle_rate = (after_idle - before_idle) / IDLE_SECONDS
        print(
            f"\nbefore load: busy_seconds {before_idle:.3f} -> {after_idle:.3f} over {IDLE_SECONDS:.0f} s (utilization {idle_rate:.3f})"
        )
        if not has_load_library():
            print("no PyTorch or CuPy: device lines above, no load proof")
            return 3
        start = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        load = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(LOAD_SECONDS)],
            capture_output=True,
            text=True,
            timeout=LOAD_SECONDS + 60,
        )
        print(load.stdout.strip() or load.stderr.strip()[-500:])
        time.sleep(2.5)  # let the sample buffer reach the exporter
        end = value(scrape(port), "accel_busy_seconds_total", "nvidia0") or 0.0
        load_rate = (end - start) / LOAD_SECONDS
        print(
            f"during load: busy_seconds {start:.3f} -> {end:.3f} (+{end - start:.2f} s over a {LOAD_SECONDS:.0f} s load, utilization {load_rate:.3f})"
        )
        ok = load.returncode == 0 and load_rate > 0.5 and load_rate > idle_rate + 0.3
        print(
            "PASS: busy time rose during the load and not before" if ok else "FAIL: busy time did not rise as expected"
        )
        return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"\nexporter exited with {proc.returncode}; last log lines:")
        print("\n".join((err or "").strip().splitlines()[-8:]))


if __name__ == "__main__":
    sys.exit(main())
