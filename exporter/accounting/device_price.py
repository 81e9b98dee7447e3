"""Split the instance price over its devices."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.context.model import PriceQuote
from exporter.readings import DeviceIdentity


def device_prices(quote: PriceQuote, devices: Sequence[DeviceIdentity]) -> dict[str, float]:
    """Hourly price per device name; devices without a price are left out (never priced at 0).

    A device-model price from config (`pricing.device_models`) wins. Otherwise the accelerators'
    share of the instance price (`quote.accelerator_share`: 1.0 with the default even split) is
    divided by the number of physical accelerators seen (GPUs, or NeuronCores on Inferentia and
    Trainium) and scaled by each device's `price_units`: 1.0 for a whole GPU or a NeuronCore,
    the slice fraction for a MIG instance (1g = 1/7 on A100/H100) and the unallocated remainder
    for a MIG parent, so a fully sliced GPU still costs exactly one GPU. On owned hardware the
    hosting overhead per device-hour (`quote.device_overhead_per_hour`) is added to that share.
    """
    by_model = dict(quote.device_model_prices)
    physical = sum(1 for d in devices if d.physical)
    per_accelerator: float | None = None
    if quote.dollars_per_hour is not None and quote.dollars_per_hour > 0 and physical > 0:
        per_accelerator = quote.dollars_per_hour * quote.accelerator_share / physical
    if quote.device_overhead_per_hour > 0:
        per_accelerator = (per_accelerator or 0.0) + quote.device_overhead_per_hour
    out: dict[str, float] = {}
    for device in devices:
        unit_price = by_model.get(device.model, per_accelerator)
        if unit_price is not None and unit_price > 0 and device.price_units > 0:
            out[device.device] = unit_price * device.price_units
    return out
