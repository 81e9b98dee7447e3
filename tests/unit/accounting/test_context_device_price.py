"""Per-device prices: even split, MIG slices, NeuronCores, device-model overrides, the OpenCost split."""

from __future__ import annotations

import asyncio

import pytest

from exporter.accounting.device_price import device_prices
from exporter.clock import ManualClock
from exporter.config import HostSettings, parse_config
from exporter.context.model import PriceQuote
from exporter.context.price.builtin_prices import opencost_accelerator_share
from exporter.context.provider import ContextProvider
from exporter.readings import DeviceIdentity
from exporter.sim.host import SimulatedHost
from exporter.sim.scenario import Scenario

A100 = "NVIDIA A100-SXM4-40GB"


def gpu(index: int, model: str = A100) -> DeviceIdentity:
    return DeviceIdentity(device=f"nvidia{index}", uuid=f"GPU-{index}", vendor="nvidia", model=model, kind="gpu")


def test_even_split_over_physical_gpus() -> None:
    prices = device_prices(PriceQuote(21.957642, "builtin"), [gpu(i) for i in range(8)])
    assert prices == {f"nvidia{i}": pytest.approx(21.957642 / 8) for i in range(8)}
    assert sum(prices.values()) == pytest.approx(21.957642)


def test_mig_slices_carry_their_fraction_and_the_parent_the_rest() -> None:
    parent = DeviceIdentity("nvidia0", "GPU-0", "nvidia", A100, "gpu", price_units=3 / 7)
    slices = [
        DeviceIdentity(
            f"nvidia0-mig{n}", f"MIG-{n}", "nvidia", A100, "mig", parent="nvidia0", physical=False, price_units=units
        )
        for n, units in ((1, 1 / 7), (2, 3 / 7))
    ]
    devices = [parent, *slices, gpu(1)]
    prices = device_prices(PriceQuote(8.0, "config"), devices)
    assert prices["nvidia0-mig1"] == pytest.approx(4.0 / 7)
    assert prices["nvidia0-mig2"] == pytest.approx(12.0 / 7)
    assert prices["nvidia0"] + prices["nvidia0-mig1"] + prices["nvidia0-mig2"] == pytest.approx(4.0)
    assert prices["nvidia1"] == pytest.approx(4.0)


def test_neuroncores_split_the_instance_price() -> None:
    cores = [DeviceIdentity(f"neuroncore{n}", f"nc{n}", "aws", "Trainium", "neuroncore") for n in range(32)]
    prices = device_prices(PriceQuote(21.5, "builtin"), cores)
    assert prices["neuroncore0"] == pytest.approx(0.671875)


def test_device_model_price_from_config_wins() -> None:
    quote = PriceQuote(21.957642, "builtin", device_model_prices=((A100, 1.5),))
    prices = device_prices(quote, [gpu(0), gpu(1, model="NVIDIA H100 80GB HBM3")])
    assert prices["nvidia0"] == 1.5
    assert prices["nvidia1"] == pytest.approx(21.957642 / 2)


def test_unknown_price_leaves_devices_unpriced_never_zero() -> None:
    assert device_prices(PriceQuote(None, "none"), [gpu(0)]) == {}
    assert device_prices(PriceQuote(0.0, "config"), [gpu(0)]) == {}
    assert device_prices(PriceQuote(None, "config", device_model_prices=((A100, 2.0),)), [gpu(0)]) == {"nvidia0": 2.0}


def test_opencost_share_matches_the_reference_figure_for_p5() -> None:
    share = opencost_accelerator_share("p5.48xlarge")
    assert share == pytest.approx(0.34, abs=0.005)
    quote = PriceQuote(55.04, "builtin", accelerator_share=share or 1.0)
    per_gpu = device_prices(quote, [gpu(i, "NVIDIA H100 80GB HBM3") for i in range(8)])["nvidia0"]
    assert per_gpu == pytest.approx(2.34, abs=0.01)
    assert opencost_accelerator_share("trn1.32xlarge") is None  # no weight for NeuronCores


def test_split_setting_reaches_the_quote() -> None:
    host = HostSettings(provider="aws", instance_type="p5.48xlarge", region="us-east-1")
    for split, expected in (("even", 1.0), ("opencost", pytest.approx(0.34, abs=0.005))):
        config = parse_config({"pricing": {"split": split}, "metadata": {"providers": []}})
        provider = ContextProvider(config, ManualClock(), SimulatedHost(Scenario("test", "", host)))
        asyncio.run(provider.start())
        assert provider.current().price.accelerator_share == expected
