"""Owned hardware and carbon: config validation, the owned price quote, and exact money and grams
(injected clock, simulated energy) against the hand computation."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from exporter.accounting.ledger import Ledger
from exporter.accounting.snapshot import DeviceSnapshot, Snapshot
from exporter.clock import ManualClock
from exporter.config.load import parse_config
from exporter.config.model import AccountingSettings, AttributionSettings, Config
from exporter.config.reader import ConfigInvalid
from exporter.context.errors import ErrorCounts
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.price.price_cache import PriceCache
from exporter.context.price.pricing import PriceResolver
from exporter.exposition.render import Renderer
from exporter.readings import DeviceIdentity, DeviceReading, SourceReport

HOURS_4Y = 4 * 8760.0
ONPREM = HostIdentity(provider="unknown", source="none")
OWNED_DOC: dict[str, Any] = {
    "pricing": {
        "owned": {
            "purchase_price": 240_000,
            "lifetime_years": 4,
            "residual_value": 16_000,
            "overhead_per_device_hour": 0.15,
            "electricity_per_kwh": 0.12,
            "pue": 1.4,
        }
    },
    "carbon": {"grid_intensity": 400},
}


def resolve(doc: dict[str, Any], identity: HostIdentity = ONPREM) -> PriceQuote:
    config = parse_config(doc)
    resolver = PriceResolver(
        config.pricing, ManualClock(), ErrorCounts(), PriceCache(None), live=False, carbon=config.carbon
    )
    return resolver.resolve_offline(identity)


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        parse_config(doc)
    return info.value.errors


def gpu(index: int) -> DeviceIdentity:
    return DeviceIdentity(f"nvidia{index}", f"GPU-{index}", "nvidia", "NVIDIA A100-SXM4-80GB", "gpu")


class Host:
    """Readings straight into the ledger on a ManualClock: simulated energy, no hardware."""

    def __init__(self, quote: PriceQuote, identity: HostIdentity = ONPREM, gpus: int = 8) -> None:
        self.clock = ManualClock()
        self.ledger = Ledger(AccountingSettings())
        self.context = HostContext(identity, quote, RuleAttributor(AttributionSettings(default_team="lab")))
        self.gpus = gpus

    def poll(self, seconds: float, readings: dict[int, dict[str, Any]]) -> Snapshot:
        self.clock.advance(seconds)
        devices = tuple(DeviceReading(gpu(i), up=True, **readings.get(i, {})) for i in range(self.gpus))
        report = SourceReport("nvml", devices, True, 0.0, self.clock.time())
        self.ledger.ingest(report, self.context, self.clock.monotonic())
        return self.ledger.snapshot(self.clock.monotonic())


def device(snapshot: Snapshot, name: str) -> DeviceSnapshot:
    return next(d for d in snapshot.devices if d.identity.device == name)


def total(pairs: tuple[tuple[Any, float], ...]) -> float:
    return sum(value for _, value in pairs)


# --- config -----------------------------------------------------------------------------------


def test_owned_config_is_read() -> None:
    owned = parse_config(OWNED_DOC).pricing.owned
    assert owned is not None and owned.host is not None
    assert (owned.host.purchase_price, owned.host.lifetime_years, owned.host.residual_value) == (240_000, 4, 16_000)
    assert (owned.electricity_dollars_per_kwh, owned.pue) == (0.12, 1.4)
    assert parse_config(OWNED_DOC).carbon.grid_intensity == 400


@pytest.mark.parametrize(
    ("owned", "expected"),
    [
        ({"purchase_price": -5, "lifetime_years": 4}, "'pricing.owned.purchase_price': expected a number from 1"),
        ({"purchase_price": 1000, "lifetime_years": 40}, "'pricing.owned.lifetime_years': expected a number from 0.25"),
        ({"purchase_price": 1000}, "'pricing.owned.lifetime_years': missing"),
        ({"purchase_price": 1000, "lifetime_years": 4, "residual_value": 1000}, "is not below purchase_price"),
        ({"purchase_price": 1000, "lifetime_years": 4, "pue": 0.9}, "'pricing.owned.pue': expected a number from 1"),
        ({"purchase_price": 1000, "lifetime_years": 4, "electricity_per_kwh": "cheap"}, "electricity_per_kwh"),
        ({"purchase_price": 1, "lifetime_years": 20}, "check the units"),
        ({"lifetime_years": 4}, "needs purchase_price beside it"),
        ({}, "give purchase_price (the whole host) or device_models"),
        ({"device_models": {"A100": {"lifetime_years": 4}}}, "device_models.A100.purchase_price': missing"),
        ({"purchase_price": 1000, "lifetime_years": 4, "lifetime": 4}, "'pricing.owned.lifetime': unknown key"),
    ],
)
def test_bad_owned_config_is_named(owned: dict[str, Any], expected: str) -> None:
    errors = problems({"pricing": {"owned": owned}})
    assert any(expected in e for e in errors), errors
    assert len(errors) == 1, errors  # one mistake, one message


@pytest.mark.parametrize(
    ("carbon", "expected"),
    [
        ({"grid_intensity": 0.4}, None),
        ({"grid_intensity": 400_000}, "'carbon.grid_intensity': expected a number from 0 to 2000"),
        ({"regions": {"us-east-1": "x"}}, "'carbon.regions.us-east-1': expected g CO2e per kWh"),
        ({"regions": ["us-east-1"]}, "'carbon.regions': expected a mapping"),
        ({"pue": 7}, "'carbon.pue': expected a number from 1 to 3"),
    ],
)
def test_carbon_config(carbon: dict[str, Any], expected: str | None) -> None:
    if expected is None:
        assert parse_config({"carbon": carbon}).carbon.grid_intensity == 0.4
        return
    assert any(expected in e for e in problems({"carbon": carbon}))


def test_defaults_change_nothing() -> None:
    assert Config().pricing.owned is None
    quote = resolve({})
    assert quote.source == "none" and quote.energy_dollars_per_kwh == 0 and quote.carbon_grams_per_kwh is None


# --- the quote --------------------------------------------------------------------------------


def test_owned_quote() -> None:
    quote = resolve(OWNED_DOC)
    assert quote.source == "owned"
    assert quote.dollars_per_hour == pytest.approx((240_000 - 16_000) / HOURS_4Y, abs=1e-12)
    assert quote.device_overhead_per_hour == 0.15
    assert quote.energy_dollars_per_kwh == pytest.approx(0.12 * 1.4, abs=1e-15)
    assert quote.carbon_grams_per_kwh == pytest.approx(400 * 1.4, abs=1e-12)  # owned PUE applies to carbon


def test_configured_instance_price_wins_over_owned() -> None:
    doc = {**OWNED_DOC, "pricing": {**OWNED_DOC["pricing"], "instance_types": {"dgx-a100": 20.0}}}
    quote = resolve(doc, HostIdentity(instance_type="dgx-a100"))
    assert (quote.source, quote.dollars_per_hour) == ("config", 20.0)


def test_per_model_owned_price() -> None:
    doc = {
        "pricing": {
            "owned": {
                "device_models": {
                    "NVIDIA A100-SXM4-80GB": {
                        "purchase_price": 17_520,
                        "lifetime_years": 2,
                        "overhead_per_device_hour": 0.5,
                    }
                }
            }
        }
    }
    host = Host(resolve(doc), gpus=1)
    host.poll(5, {})
    snap = host.poll(3600, {})
    assert device(snap, "nvidia0").price_per_hour == pytest.approx(17_520 / (2 * 8760) + 0.5, abs=1e-12)  # 1.5
    assert total(device(snap, "nvidia0").cost) == pytest.approx(1.5, abs=1e-9)


def test_cloud_region_intensity_from_the_builtin_table_and_overrides() -> None:
    aws = HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="eu-north-1")
    assert resolve({}, aws).carbon_grams_per_kwh == pytest.approx(8.8)
    assert resolve({"carbon": {"regions": {"eu-north-1": 30}}}, aws).carbon_grams_per_kwh == 30
    assert resolve({"carbon": {"regions": {"eu-north-1": 30}, "pue": 1.15}}, aws).carbon_grams_per_kwh == pytest.approx(
        34.5
    )
    assert resolve({}, HostIdentity(provider="aws", region="xx-nowhere-1")).carbon_grams_per_kwh is None


# --- exact counters ---------------------------------------------------------------------------


def test_owned_dollars_and_grams_are_exact() -> None:
    """Hand computation: 8 GPUs, amortization + overhead per device-hour, energy x PUE x tariff."""
    host = Host(resolve(OWNED_DOC))
    # nvidia0 busy, energy counter from 1e6 J; nvidia1 idle with a counter; the others draw nothing known.
    host.poll(5, {0: {"utilization": 0.9, "energy_joules": 1_000_000.0}, 1: {"utilization": 0.0, "energy_joules": 5.0}})
    intervals = [(10.0, 3_000.0, 600.0), (7.5, 2_700.0, 450.0), (3600.0, 1_440_000.0, 216_000.0)]
    e0, e1 = 1_000_000.0, 5.0
    for seconds, add0, add1 in intervals:
        e0 += add0
        e1 += add1
        snap = host.poll(
            seconds, {0: {"utilization": 0.9, "energy_joules": e0}, 1: {"utilization": 0.0, "energy_joules": e1}}
        )
    elapsed = sum(s for s, _, _ in intervals)
    per_device_hour = (240_000 - 16_000) / HOURS_4Y / 8 + 0.15
    tariff = 0.12 * 1.4
    joules0 = sum(a for _, a, _ in intervals)
    joules1 = sum(b for _, _, b in intervals)
    hardware = per_device_hour * elapsed / 3600
    gpu0, gpu1, gpu2 = device(snap, "nvidia0"), device(snap, "nvidia1"), device(snap, "nvidia2")
    assert gpu0.price_per_hour == pytest.approx(per_device_hour, abs=1e-12)
    assert total(gpu0.cost) == pytest.approx(hardware + joules0 / 3.6e6 * tariff, abs=1e-9)
    assert total(gpu1.cost) == pytest.approx(hardware + joules1 / 3.6e6 * tariff, abs=1e-9)
    assert total(gpu2.cost) == pytest.approx(hardware, abs=1e-9)
    # Cost, idle cost and waste keep their definitions: an idle device's money is all idle and all waste.
    assert total(gpu1.idle_cost) == pytest.approx(total(gpu1.cost), abs=1e-9)
    assert total(gpu1.waste) == pytest.approx(total(gpu1.cost), abs=1e-9)
    assert total(gpu0.waste) == pytest.approx(0.0, abs=1e-12)  # above the 0.8 target
    # Carbon: kWh x PUE x grid intensity; a device with no energy reading emits nothing known.
    assert total(gpu0.carbon) == pytest.approx(joules0 / 3.6e6 * 1.4 * 400, abs=1e-9)
    assert total(gpu1.carbon) == pytest.approx(joules1 / 3.6e6 * 1.4 * 400, abs=1e-9)
    assert gpu2.carbon == ()
    assert {pair for pair, _ in gpu0.carbon} == {("lab", "")}


def test_power_times_time_without_an_energy_counter() -> None:
    host = Host(resolve(OWNED_DOC), gpus=1)
    host.poll(5, {0: {"utilization": 0.0, "power_watts": 300.0}})
    host.poll(10, {0: {"utilization": 0.0, "power_watts": 250.0}})
    snap = host.poll(20, {0: {"utilization": 0.0, "power_watts": 400.0}})
    joules = 250.0 * 10 + 400.0 * 20  # each interval at the power read at its end
    gpu0 = device(snap, "nvidia0")
    hardware = ((240_000 - 16_000) / HOURS_4Y + 0.15) * 30 / 3600
    assert total(gpu0.cost) == pytest.approx(hardware + joules / 3.6e6 * 0.12 * 1.4, abs=1e-9)
    assert total(gpu0.carbon) == pytest.approx(joules / 3.6e6 * 1.4 * 400, abs=1e-9)


def test_energy_read_every_few_polls_is_not_counted_twice() -> None:
    """NVML's energy counter is read about every 5 s; the polls between have power only."""
    host = Host(resolve(OWNED_DOC), gpus=1)
    host.poll(1, {0: {"power_watts": 100.0, "energy_joules": 0.0}})
    host.poll(1, {0: {"power_watts": 100.0}})
    snap = host.poll(1, {0: {"power_watts": 100.0, "energy_joules": 200.0}})
    gpu0 = device(snap, "nvidia0")
    assert total(gpu0.carbon) == pytest.approx(200.0 / 3.6e6 * 1.4 * 400, abs=1e-12)


def test_cloud_host_gets_grams_without_changing_its_money() -> None:
    identity = HostIdentity(provider="aws", instance_type="p4d.24xlarge", region="us-east-1")
    quote = resolve({"pricing": {"instance_types": {"p4d.24xlarge": 32.0}}}, identity)
    host = Host(quote, identity)
    host.poll(5, {0: {"energy_joules": 0.0}})
    snap = host.poll(3600, {0: {"energy_joules": 3.6e6}})
    gpu0 = device(snap, "nvidia0")
    assert total(gpu0.cost) == pytest.approx(4.0, abs=1e-9)  # no tariff on a cloud bill
    assert total(gpu0.carbon) == pytest.approx(379.069, abs=1e-9)


# --- exposition -------------------------------------------------------------------------------


def test_exposition_says_owned_and_is_promtool_clean() -> None:
    host = Host(resolve(OWNED_DOC), gpus=2)
    host.poll(5, {0: {"energy_joules": 0.0}})
    snap = host.poll(60, {0: {"energy_joules": 18_000.0}})
    text = Renderer(process_metrics=False).plain(snap, False).body.decode()
    assert 'price_source="owned"' in text
    assert 'accel_carbon_grams_total{device="nvidia0",team="lab",workload=""}' in text
    assert 'accel_carbon_grams_total{device="nvidia1"' not in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_worked_example() -> None:
    """docs/pricing.md's 8xA100 server: its figures, through the resolver and the ledger."""
    doc = {
        "pricing": {
            "owned": {
                "purchase_price": 200_000,
                "lifetime_years": 4,
                "residual_value": 20_000,
                "overhead_per_device_hour": 0.25,
                "electricity_per_kwh": 0.15,
                "pue": 1.5,
            }
        },
        "carbon": {"grid_intensity": 400},
    }
    host = Host(resolve(doc))
    host.poll(5, {0: {"utilization": 1.0, "power_watts": 400.0}, 1: {"utilization": 0.0, "power_watts": 60.0}})
    snap = host.poll(
        3600, {0: {"utilization": 1.0, "power_watts": 400.0}, 1: {"utilization": 0.0, "power_watts": 60.0}}
    )
    busy, idle = device(snap, "nvidia0"), device(snap, "nvidia1")
    assert round(busy.price_per_hour or 0, 4) == 0.8921
    assert round(total(busy.cost), 4) == 0.9821
    assert round(total(busy.carbon), 6) == 240.0
    assert round(total(idle.cost), 4) == 0.9056
    assert round(total(idle.idle_cost), 4) == round(total(idle.waste), 4) == 0.9056
    assert round(total(idle.cost) * 730) == 661
    assert round(total(idle.carbon) * 730 / 1000, 1) == 26.3
