"""Busy-time accuracy: our sample-buffer integration against point sampling, on simulated GPUs.

Point sampling is what most GPU exporters do: read nvmlDeviceGetUtilizationRates once per
interval (it covers the driver's last sample period, 1/6 s to 1 s) and let it stand for the whole
interval. Our NVML source integrates nvmlDeviceGetSamples since the previous poll instead. Both
read the same simulated driver on a ManualClock, whose sample buffer is filled from the load
pattern's exact integrals, so the ground truth is known.

For each poll interval the run is repeated at `--phases` poll phases (where the first poll falls
within the load's period), since point sampling depends on it; the table gives the mean and the
worst relative error of busy seconds over `--hours` of simulated time.

    .venv/bin/python bench/bench_accuracy.py
    .venv/bin/python bench/bench_accuracy.py --hours 0.25 --phases 5   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.clock import ManualClock
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.scenario import Scenario, parse_scenario
from exporter.sources.nvml import NvmlSource

LOADS: dict[str, dict[str, Any]] = {
    "bursty: 200 ms busy every 2 s (10 %)": {"burst": {"busy": "0.2s", "period": "2s"}},
    "bursty: 1 s busy every 10 s (10 %)": {"burst": {"busy": "1s", "period": "10s"}},
    "random steps: mean 35 %, new level every 3 s": {"random": {"mean": 0.35, "spread": 0.3, "step": "3s", "seed": 5}},
}


async def one_run(scenario: Scenario, interval: float, phase: float, seconds: float) -> tuple[float, float, float]:
    """(integrated busy s, point-sampled busy s, true busy s) over one run."""
    clock = ManualClock()
    fake = FakeNvml(scenario, clock)
    module = fake.module()
    source = NvmlSource(lambda: module, clock, SimProcFs(fake))
    integrated = sampled = 0.0
    try:
        clock.advance(phase)
        await source.poll()  # first contact: both methods start counting from here
        first = clock.monotonic()
        handle = module.nvmlDeviceGetHandleByIndex(0)
        while clock.monotonic() + interval <= first + seconds:
            clock.advance(interval)
            reading = (await source.poll()).devices[0]
            integrated += reading.busy_seconds or 0.0
            sampled += module.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0 * interval
        last = clock.monotonic()
    finally:
        await source.stop()
    truth = scenario.gpus[0].utilization.busy(first, last)
    return integrated, sampled, truth


async def run(args: argparse.Namespace) -> list[str]:
    rows = [
        "| load | poll interval | integration: mean error | integration: worst | "
        "point sampling: mean error | point sampling: worst |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, pattern in LOADS.items():
        scenario = parse_scenario({"name": "accuracy", "gpus": [{"index": 0, "utilization": pattern}]}, "accuracy")
        for interval in args.intervals:
            ours: list[float] = []
            theirs: list[float] = []
            for k in range(args.phases):
                # Spread over the longest load period (10 s), off the driver's 1/6 s sample grid.
                phase = 1.0 + 10.0 * ((k * 0.6180339887) % 1.0)
                integrated, sampled, truth = await one_run(scenario, interval, phase, args.hours * 3600)
                ours.append(abs(integrated - truth) / truth)
                theirs.append(abs(sampled - truth) / truth)
            rows.append(
                f"| {label} | {interval:g} s | {100 * statistics.fmean(ours):.4f} % | {100 * max(ours):.4f} % | "
                f"{100 * statistics.fmean(theirs):.1f} % | {100 * max(theirs):.1f} % |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="simulated hours per run (default 1)")
    parser.add_argument("--phases", type=int, default=20, help="poll phases per interval (default 20)")
    parser.add_argument("--intervals", type=float, nargs="+", default=[5.0, 15.0, 30.0])
    args = parser.parse_args()
    print(f"{args.hours:g} h of simulated time per run, {args.phases} poll phases per interval")
    rows = asyncio.run(run(args))
    print()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
