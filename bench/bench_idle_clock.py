"""Cost of the persisted idle clock: one atomic save (write, fsync, rename) per poll, one load at start.

    .venv/bin/python bench/bench_idle_clock.py [--runs 50] [--directory /var/lib/accel-cost-exporter]

The save runs off the event loop, after every poll; fsync dominates it, so the figure is the
disk's, and the directory should be on the disk the state directory will use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.accounting.idle_clock import IdleClockFile, IdleMark  # noqa: E402

NOW = 1_800_000_000.0


def measure(devices: int, runs: int, directory: str | None) -> tuple[float, float, int, float]:
    """Median and p95 save time (ms), file size (bytes) and load time (ms) for `devices` marks."""
    marks = {
        f"GPU-{i:08x}-0000-4000-8000-000000000000": IdleMark(NOW - i, "idle_held", NOW - 2 * i) for i in range(devices)
    }
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        store = IdleClockFile(scratch)
        saves = []
        for _ in range(runs):
            start = time.perf_counter()
            store.save(marks)
            saves.append(time.perf_counter() - start)
        size = store.path.stat().st_size
        start = time.perf_counter()
        for _ in range(runs):
            assert len(store.load(NOW)) == devices
        load = (time.perf_counter() - start) / runs
    saves.sort()
    return statistics.median(saves) * 1e3, saves[int(0.95 * (runs - 1))] * 1e3, size, load * 1e3


def main() -> None:
    """Print one row per fleet size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--directory", default=None, help="where to write (default: the system temp directory)")
    args = parser.parse_args()
    print("| devices | save median | save p95 | file | load |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for devices in (8, 64, 1024):
        median, p95, size, load = measure(devices, args.runs, args.directory)
        print(f"| {devices} | {median:.1f} ms | {p95:.1f} ms | {size / 1024:.1f} KiB | {load:.2f} ms |")


if __name__ == "__main__":
    main()
