"""GPM in accounting and exposition: SM/tensor/DRAM counters, MIG states from GPM busy time, waste on
the `time` and `sm` bases, the basis info series, the config key, and a real exporter's output
through promtool."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import ExporterProcess, wait_until
from harness import FakeNvmlHost
from prometheus_client.parser import text_string_to_metric_families

from exporter.accounting.ledger import Ledger
from exporter.accounting.snapshot import DeviceSnapshot, Snapshot
from exporter.config import ConfigInvalid, parse_config
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.exposition.collector import build_families

INSTANCE_PRICE = 64.0  # 8 GPUs: 8 USD per GPU-hour
TARGET = 0.8


class Rig:
    """Simulated H100s with GPM → the real NvmlSource → the Ledger."""

    def __init__(self, scenario: dict[str, Any] | str, basis: str) -> None:
        self.host = FakeNvmlHost(scenario)
        self.ledger = Ledger(AccountingSettings(waste_basis=basis, target_utilization=TARGET))
        identity = HostIdentity(provider="aws", instance_type="p5.48xlarge", tags=(("Team", "ml"),), source="demo")
        self.context = HostContext(
            identity, PriceQuote(INSTANCE_PRICE, "config"), RuleAttributor(AttributionSettings(), identity.tags)
        )

    async def step(self, seconds: float = 5.0) -> dict[str, DeviceSnapshot]:
        await self.host.step(seconds)
        now = self.host.clock.monotonic()
        self.ledger.ingest(self.host.last_report, self.context, now)
        self.snapshot: Snapshot = self.ledger.snapshot(now)
        return {d.identity.device: d for d in self.snapshot.devices}


@pytest_asyncio.fixture
async def rigs() -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(scenario: dict[str, Any] | str, basis: str = "time") -> Rig:
        rig = Rig(scenario, basis)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.host.source.stop()


def total(pairs: tuple[tuple[Any, float], ...]) -> float:
    return sum(v for _, v in pairs)


def samples(snapshot: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in build_families(snapshot):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def run(rig: Rig, polls: int = 13) -> dict[str, DeviceSnapshot]:
    for _ in range(polls):
        devices = await rig.step()
    return devices


async def test_sm_basis_sees_the_spinning_kernel_that_time_basis_misses(rigs: Callable[..., Rig]) -> None:
    by_time = await run(rigs("h100-gpm", "time"))
    by_sm = await run(rigs("h100-gpm", "sm"))
    spinner_time, spinner_sm = by_time["nvidia4"], by_sm["nvidia4"]
    cost = total(spinner_sm.cost)
    assert cost == pytest.approx(8.0 * 60 / 3600)  # 12 intervals of 5 s after the first poll
    assert total(spinner_time.waste) == pytest.approx(0.0, abs=1e-12)  # 100 % "utilization": no waste
    assert total(spinner_sm.waste) == pytest.approx(cost * (TARGET - 0.03) / TARGET, rel=1e-6)
    # Real work is judged on SM activity too: GPU 7 at 70 % utilization, 60 % SM activity.
    assert total(by_time["nvidia7"].waste) == pytest.approx(cost * (TARGET - 0.7) / TARGET, rel=1e-6)
    assert total(by_sm["nvidia7"].waste) == pytest.approx(cost * (TARGET - 0.6) / TARGET, rel=1e-6)
    # An idle GPU wastes all of it on both bases.
    assert total(by_sm["nvidia5"].waste) == pytest.approx(total(by_sm["nvidia5"].cost))
    assert total(by_time["nvidia5"].waste) == pytest.approx(total(by_time["nvidia5"].cost))
    # Each device says which basis it uses: the MIG parent has no GPM reading of its own.
    assert {d: s.waste_basis for d, s in by_sm.items() if d.startswith("nvidia6")} == {
        "nvidia6": "time",
        "nvidia6-mig1": "sm",
        "nvidia6-mig5": "sm",
        "nvidia6-mig13": "sm",
    }
    assert {s.waste_basis for s in by_time.values()} == {"time"}


async def test_sm_basis_falls_back_to_time_per_device(rigs: Callable[..., Rig]) -> None:
    scenario = {
        "gpus": [
            {"index": 0, "model": "NVIDIA H100 80GB HBM3", "utilization": 1.0, "sm_activity": 0.1},
            {"index": 1, "model": "NVIDIA A100-SXM4-80GB", "utilization": 0.4},
        ],
        "processes": [{"pid": 1, "device": "0", "memory": "1GiB"}, {"pid": 2, "device": "1", "memory": "1GiB"}],
    }
    rig = rigs(scenario, "sm")
    devices = await run(rig, 7)
    cost = total(devices["nvidia1"].cost)
    assert devices["nvidia1"].waste_basis == "time"
    assert total(devices["nvidia1"].waste) == pytest.approx(cost * (TARGET - 0.4) / TARGET, rel=1e-3)
    assert total(devices["nvidia0"].waste) == pytest.approx(cost * (TARGET - 0.1) / TARGET, rel=1e-6)
    shown = samples(rig.snapshot)
    assert shown[("accel_waste_basis_info", (("basis", "sm"), ("device", "nvidia0")))] == 1
    assert shown[("accel_waste_basis_info", (("basis", "time"), ("device", "nvidia1")))] == 1
    assert not any(
        name == "accel_sm_active_seconds_total" and dict(labels)["device"] == "nvidia1" for name, labels in shown
    )


async def test_activity_counters_and_mig_states(rigs: Callable[..., Rig]) -> None:
    rig = rigs("h100-gpm")
    devices = await run(rig)
    start = rig.host.fake.now() - 60  # the first poll's sample started the first interval
    end = rig.host.fake.now()
    shown = samples(rig.snapshot)

    def value(name: str, device: str) -> float:
        return shown[(name, (("device", device),))]

    assert value("accel_sm_active_seconds_total", "nvidia4") == pytest.approx(0.03 * 60)
    assert value("accel_sm_occupancy_ratio", "nvidia4") == pytest.approx(0.02)
    assert value("accel_tensor_active_seconds_total", "nvidia7") == pytest.approx(0.4 * 60)
    assert value("accel_dram_active_seconds_total", "nvidia7") == pytest.approx(0.3 * 60)
    truth = rig.host.fake.gpm_truth("0", 2, start, end)
    assert value("accel_sm_active_seconds_total", "nvidia0") == pytest.approx(truth, rel=0.01)
    # MIG slices: busy time from GPM graphics activity, and states like whole GPUs.
    assert value("accel_busy_seconds_total", "nvidia6-mig1") == pytest.approx(0.85 * 60)
    assert devices["nvidia6-mig1"].state == "active"
    assert devices["nvidia6-mig5"].state == "idle_held"  # a notebook holding 12 GiB, computing nothing
    assert dict(devices["nvidia6-mig5"].state_seconds)["idle_held"] == pytest.approx(60)
    assert value("accel_utilization_ratio", "nvidia6-mig1") == pytest.approx(0.85)
    # The MIG parent has no activity series of its own.
    assert ("accel_sm_active_seconds_total", (("device", "nvidia6"),)) not in shown


async def test_counters_stay_and_occupancy_goes_while_dcgm_holds_gpm(rigs: Callable[..., Rig]) -> None:
    fault = {"type": "error", "call": "nvmlGpmSampleGet", "error": "InUse", "at": "20s"}
    gpu = {"index": 0, "model": "NVIDIA H100 80GB HBM3", "utilization": 0.5, "sm_occupancy": 0.3, "faults": [fault]}
    rig = rigs({"gpus": [gpu]})
    await run(rig, 3)
    before = samples(rig.snapshot)
    assert before[("accel_sm_occupancy_ratio", (("device", "nvidia0"),))] == pytest.approx(0.3)
    await run(rig, 3)
    after = samples(rig.snapshot)
    assert ("accel_sm_occupancy_ratio", (("device", "nvidia0"),)) not in after
    key = ("accel_sm_active_seconds_total", (("device", "nvidia0"),))
    assert after[key] == before[key] == pytest.approx(0.5 * 10)
    assert after[("accel_exporter_errors_total", (("collector", "nvml"), ("reason", "gpm_in_use")))] == 3
    assert (
        after[("accel_busy_seconds_total", (("device", "nvidia0"),))]
        > before[("accel_busy_seconds_total", (("device", "nvidia0"),))]
    )


def test_waste_basis_config_key() -> None:
    assert parse_config({}).accounting.waste_basis == "time"
    assert parse_config({"accounting": {"waste_basis": "sm"}}).accounting.waste_basis == "sm"
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"accounting": {"waste_basis": "tensor"}}, source="test.yml")
    message = str(info.value)
    assert "'accounting.waste_basis'" in message and "'time', 'sm'" in message and "'tensor'" in message


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_real_exporter_on_h100_gpm_is_promtool_clean(
    run_exporter: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("accounting:\n  waste_basis: sm\n", encoding="utf-8")
    exporter = run_exporter(["--demo", "h100-gpm", "--config.file", str(config), "--collector.interval", "500ms"])
    text = ""

    def has_gpm() -> bool:
        nonlocal text
        text = exporter.metrics()
        return 'accel_sm_active_seconds_total{device="nvidia6-mig1"}' in text

    wait_until(has_gpm, "GPM counters in the demo's output", timeout=60)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    families = {f.name: f for f in text_string_to_metric_families(text)}
    occupancy = {s.labels["device"]: s.value for s in families["accel_sm_occupancy_ratio"].samples}
    assert occupancy["nvidia4"] == pytest.approx(0.02)
    bases = {s.labels["device"]: s.labels["basis"] for s in families["accel_waste_basis_info"].samples}
    assert bases["nvidia4"] == "sm" and bases["nvidia6"] == "time"
    assert "nvidia6" not in {s.labels["device"] for s in families["accel_sm_active_seconds"].samples}
