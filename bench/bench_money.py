"""The money figure of issue 3: dollars per hour spent, idle and wasted on p4d-idle-fleet.

Runs the real NVML source against the simulated driver, the ledger and the exposition with an
injected clock (one simulated hour at a 5 s interval, in about a second), parses the exporter's
own /metrics text, and prints it next to the same numbers computed by hand from the scenario and
the built-in price table.

    python bench/bench_money.py [--scenario p4d-idle-fleet] [--interval 5] [--hours 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.accounting.ledger import Ledger
from exporter.clock import ManualClock
from exporter.config import load_config
from exporter.context.provider import ContextProvider
from exporter.exposition.render import RenderCache
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.host import DEMO_CONFIG, SimulatedHost
from exporter.sim.scenario import load_scenario
from exporter.sources.nvml import NvmlSource


def by_hand(scenario_name: str) -> dict[str, float]:
    """The expected $/h from the scenario's mean utilizations and the price table."""
    scenario = load_scenario(scenario_name)
    price = {"p4d.24xlarge": 21.957642}[scenario.host.instance_type or ""]
    per_gpu = price / len(scenario.gpus)
    # Mean utilization of each GPU over a long window (RandomSteps: uniform mean±spread, here never clipped).
    means = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.55, 4: 0.10, 5: 0.35, 6: 0.40, 7: 0.36}
    idle = [g for g, u in means.items() if u <= 0.01]
    waste = sum(max(0.0, 0.8 - u) / 0.8 for u in means.values())
    return {"spent": price, "idle": per_gpu * len(idle), "wasted": per_gpu * waste}


async def measure(scenario_name: str, interval: float, hours: float) -> dict[str, float]:
    clock = ManualClock()
    scenario = load_scenario(scenario_name)
    fake = FakeNvml(scenario, clock)
    source = NvmlSource(fake.module, clock, SimProcFs(fake))
    config = load_config(str(DEMO_CONFIG))
    provider = ContextProvider(config, clock, SimulatedHost(scenario))
    await provider.start()
    ledger = Ledger(config.accounting, config.attribution.max_label_values)
    cache = RenderCache(process_metrics=False)
    await source.start()
    ledger.ingest(await source.poll(), provider.current(), clock.monotonic())
    cache.publish(ledger.snapshot(clock.monotonic()))
    start = totals(cache)
    steps = int(hours * 3600 / interval)
    for _ in range(steps):
        clock.advance(interval)
        ledger.ingest(await source.poll(), provider.current(), clock.monotonic())
    cache.publish(ledger.snapshot(clock.monotonic()))
    end = totals(cache)
    await source.stop()
    elapsed_hours = steps * interval / 3600
    return {k: (end[k] - start[k]) / elapsed_hours for k in end}


def totals(cache: RenderCache) -> dict[str, float]:
    rendered = cache.text()
    assert rendered is not None
    out = {"spent": 0.0, "idle": 0.0, "wasted": 0.0}
    names = {"accel_cost_dollars": "spent", "accel_idle_cost_dollars": "idle", "accel_waste_dollars": "wasted"}
    for family in text_string_to_metric_families(rendered.body.decode()):
        key = names.get(family.name)
        if key:
            out[key] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", default="p4d-idle-fleet")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--hours", type=float, default=1.0)
    args = parser.parse_args()
    measured = asyncio.run(measure(args.scenario, args.interval, args.hours))
    expected = by_hand(args.scenario)
    print(f"{args.scenario}, {args.hours:g} simulated hour(s) at a {args.interval:g} s interval")
    print("| $/h | exporter | by hand | difference |")
    print("| --- | --- | --- | --- |")
    for key in ("spent", "idle", "wasted"):
        diff = measured[key] - expected[key]
        print(
            f"| {key} | {measured[key]:.4f} | {expected[key]:.4f} | {diff:+.4f} ({diff / expected[key] * 100:+.2f} %) |"
        )


if __name__ == "__main__":
    main()
