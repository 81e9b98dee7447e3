"""The `pricing.owned` and `carbon` sections: owned hardware, electricity and grid carbon intensity."""

from __future__ import annotations

from exporter.config.carbon_schedule import MAX_GRAMS_PER_KWH, ScheduleInvalid, read_schedule
from exporter.config.model import CarbonSchedule, CarbonSettings, OwnedHardware, OwnedSettings
from exporter.config.reader import Reader
from exporter.context.price.price_bounds import price_problem
from exporter.numbers import finite_number

HOURS_PER_YEAR = 8760.0  # 365 days: the amortization year docs/pricing.md states
MAX_PURCHASE_DOLLARS = 100_000_000.0
MAX_LIFETIME_YEARS = 20.0
MAX_DOLLARS_PER_KWH = 10.0
MAX_PUE = 3.0
_HARDWARE_KEYS = ("lifetime_years", "residual_value", "overhead_per_device_hour")


def amortized_per_hour(hardware: OwnedHardware) -> float:
    """USD per hour of the purchase, less the residual value, spread evenly over the lifetime."""
    return (hardware.purchase_price - hardware.residual_value) / (hardware.lifetime_years * HOURS_PER_YEAR)


def parse_owned(r: Reader) -> OwnedSettings | None:
    """`pricing.owned`, or None when the section is absent."""
    if not r.has("owned"):
        return None
    owned = r.section("owned")
    has_host = owned.has("purchase_price")
    host = _hardware(owned) if has_host else None
    stray = [] if has_host else [key for key in _HARDWARE_KEYS if owned.has(key)]
    for key in stray:
        owned.problem(key, "needs purchase_price beside it (the whole host's price in USD)")
    models: list[tuple[str, OwnedHardware]] = []
    model_section = owned.section("device_models")
    for name in _names(owned, "device_models"):
        entry = model_section.section(name)
        if entry.has("purchase_price"):
            hardware = _hardware(entry)
        else:
            entry.problem("purchase_price", "missing: the price of one device of this model in USD")
            for key in _HARDWARE_KEYS:  # known keys: only the missing one is reported
                entry.has(key)
            hardware = None
        entry.finish()
        if hardware is not None:
            models.append((name, hardware))
    model_section.finish()
    out = OwnedSettings(
        host=host,
        device_models=tuple(sorted(models)),
        electricity_dollars_per_kwh=owned.number("electricity_per_kwh", 0.0, minimum=0.0, maximum=MAX_DOLLARS_PER_KWH),
        pue=owned.number("pue", 1.0, minimum=1.0, maximum=MAX_PUE),
    )
    if not has_host and not stray and not owned.has("device_models"):
        owned.problem(None, "give purchase_price (the whole host) or device_models (per device model)")
    owned.finish()
    return out


def _names(r: Reader, key: str) -> list[str]:
    value = r.raw(key)
    if value is None:
        return []
    if not isinstance(value, dict) or not value:
        r.error(key, "a mapping of device models to {purchase_price, lifetime_years, ...}", value)
        return []
    return [str(name) for name in value]


def _hardware(r: Reader) -> OwnedHardware | None:
    """One purchase: price, lifetime, residual value, overhead; None (errors recorded) when unusable."""
    errors_before = r.error_count
    price = r.number("purchase_price", 0.0, minimum=1.0, maximum=MAX_PURCHASE_DOLLARS)
    if not r.has("lifetime_years"):
        r.problem("lifetime_years", "missing: the years the hardware is written off over (e.g. 4)")
    years = r.number("lifetime_years", 0.0, minimum=0.25, maximum=MAX_LIFETIME_YEARS)
    residual = r.number("residual_value", 0.0, minimum=0.0, maximum=MAX_PURCHASE_DOLLARS)
    overhead = r.number("overhead_per_device_hour", 0.0, minimum=0.0, maximum=100.0)
    if r.error_count > errors_before or years <= 0:
        return None
    if residual >= price:
        r.problem("residual_value", f"{residual:g} is not below purchase_price {price:g}: nothing would be amortized")
        return None
    hardware = OwnedHardware(price, years, residual, overhead)
    problem = price_problem(amortized_per_hour(hardware) + overhead)
    if problem is not None:
        r.problem("purchase_price", f"the hourly price it gives, {problem}; check the units (USD, years)")
        return None
    return hardware


def parse_carbon(r: Reader) -> CarbonSettings:
    """The `carbon` section: grid intensity in g CO2e per kWh, per-region overrides, PUE, a schedule file."""
    intensity = r.number("grid_intensity", -1.0, minimum=0.0, maximum=MAX_GRAMS_PER_KWH)
    regions: list[tuple[str, float]] = []
    raw = r.raw("regions")
    if raw is not None and not isinstance(raw, dict):
        r.error("regions", "a mapping of cloud regions to g CO2e per kWh", raw)
    elif raw is not None:
        for name, value in raw.items():
            grams = finite_number(value)
            if not isinstance(name, str) or grams is None or not 0.0 <= grams <= MAX_GRAMS_PER_KWH:
                r.error(f"regions.{name}", f"g CO2e per kWh from 0 to {MAX_GRAMS_PER_KWH:g}", value)
                continue
            regions.append((name, grams))
    pue = r.number("pue", -1.0, minimum=1.0, maximum=MAX_PUE)
    out = CarbonSettings(
        grid_intensity=intensity if intensity >= 0 else None,
        regions=tuple(sorted(regions)),
        pue=pue if pue >= 1.0 else None,
        schedule=_schedule(r),
    )
    r.finish()
    return out


def _schedule(r: Reader) -> CarbonSchedule | None:
    """`carbon.schedule_file`, read now: at startup a bad file stops the exporter, on reload the old one stays."""
    path = r.optional_string("schedule_file")
    if path is None:
        return None
    if not path.startswith("/"):
        r.problem("schedule_file", f"must be an absolute path (the service's working directory varies), found {path!r}")
        return None
    try:
        return read_schedule(path)
    except ScheduleInvalid as exc:
        r.problem("schedule_file", str(exc))
        return None
