"""Grid carbon intensity (g CO2e per kWh) for a host: config, then the built-in AWS region table.

The table holds location-based grid emission factors per AWS region, from the Cloud Carbon
Footprint methodology's AWS emission factors (which cite EEA, EPA eGRID and carbonfootprint.com
national averages), converted from metric tons to grams; taken on `CARBON_TABLE_AS_OF`. Grids
change every year: `carbon.regions` overrides any entry, `carbon.grid_intensity` all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.config.model import CarbonSettings

CARBON_TABLE_AS_OF = "2026-12-05"
CARBON_TABLE_SOURCE = "Cloud Carbon Footprint methodology, AWS grid emission factors (location-based)"

_AWS_GRAMS_PER_KWH: dict[str, float] = {
    "us-east-1": 379.069,
    "us-east-2": 410.608,
    "us-west-1": 322.167,
    "us-west-2": 322.167,
    "ca-central-1": 120.0,
    "eu-west-1": 278.6,
    "eu-west-2": 225.0,
    "eu-west-3": 51.1,
    "eu-central-1": 311.0,
    "eu-south-1": 213.4,
    "eu-north-1": 8.8,
    "ap-south-1": 708.2,
    "ap-northeast-1": 465.8,
    "ap-northeast-2": 415.6,
    "ap-northeast-3": 465.8,
    "ap-southeast-1": 408.0,
    "ap-southeast-2": 760.0,
    "ap-east-1": 710.0,
    "sa-east-1": 61.7,
    "me-south-1": 505.9,
    "af-south-1": 900.6,
}


@dataclass(frozen=True)
class GridIntensity:
    """Grams of CO2e per kWh of facility energy, and where the figure came from."""

    grams_per_kwh: float
    source: str  # "config", "config-region" or "builtin"


def builtin_intensities() -> dict[str, float]:
    """The built-in table, by AWS region (a copy)."""
    return dict(_AWS_GRAMS_PER_KWH)


def grid_intensity(settings: CarbonSettings, region: str) -> GridIntensity | None:
    """The host's grid intensity; None when neither the config nor the table knows its region."""
    if settings.grid_intensity is not None:
        return GridIntensity(settings.grid_intensity, "config")
    configured = dict(settings.regions)
    if region in configured:
        return GridIntensity(configured[region], "config-region")
    if region in _AWS_GRAMS_PER_KWH:
        return GridIntensity(_AWS_GRAMS_PER_KWH[region], "builtin")
    return None
