"""A dated built-in catalogue of accelerator instance types, for the rightsizing recommendations.

Prices are AWS us-east-1 Linux on-demand list prices per hour, as of CATALOGUE_DATE (the same
source as exporter/context/price_table.json). `devices` counts what the exporter calls a device:
GPUs for NVIDIA types, NeuronCores for Inferentia/Trainium types, so memory is per GPU or per
NeuronCore (a chip's memory divided by its cores). Memory is the nominal size in GiB.
"""

from __future__ import annotations

from dataclasses import dataclass

CATALOGUE_DATE = "2026-07-20"
CATALOGUE_REGION = "us-east-1"


@dataclass(frozen=True)
class InstanceType:
    """One accelerator instance type: how many devices of which model, and its list price."""

    name: str
    vendor: str  # nvidia | neuron: a move never crosses vendors (different software stacks)
    model: str
    devices: int
    memory_gib_per_device: float
    dollars_per_hour: float | None  # None: no on-demand list price (e.g. Capacity Blocks only)

    @property
    def family(self) -> str:
        """The family part of the name: `p4d` for `p4d.24xlarge`."""
        return self.name.split(".", 1)[0]


def _row(name: str, vendor: str, model: str, devices: int, gib: float, price: float | None) -> InstanceType:
    return InstanceType(name, vendor, model, devices, gib, price)


_N = "nvidia"
_AWS = "neuron"
CATALOGUE: tuple[InstanceType, ...] = (
    _row("p4d.24xlarge", _N, "A100-SXM4-40GB", 8, 40, 21.957642),
    _row("p4de.24xlarge", _N, "A100-SXM4-80GB", 8, 80, 27.44705),
    _row("p5.4xlarge", _N, "H100-SXM5-80GB", 1, 80, 6.88),
    _row("p5.48xlarge", _N, "H100-SXM5-80GB", 8, 80, 55.04),
    _row("p5e.48xlarge", _N, "H200-SXM-141GB", 8, 141, None),
    _row("p5en.48xlarge", _N, "H200-SXM-141GB", 8, 141, 63.296),
    _row("g4dn.xlarge", _N, "T4", 1, 16, 0.526),
    _row("g4dn.2xlarge", _N, "T4", 1, 16, 0.752),
    _row("g4dn.4xlarge", _N, "T4", 1, 16, 1.204),
    _row("g4dn.8xlarge", _N, "T4", 1, 16, 2.176),
    _row("g4dn.16xlarge", _N, "T4", 1, 16, 4.352),
    _row("g4dn.12xlarge", _N, "T4", 4, 16, 3.912),
    _row("g4dn.metal", _N, "T4", 8, 16, 7.824),
    _row("g5.xlarge", _N, "A10G", 1, 24, 1.006),
    _row("g5.2xlarge", _N, "A10G", 1, 24, 1.212),
    _row("g5.4xlarge", _N, "A10G", 1, 24, 1.624),
    _row("g5.8xlarge", _N, "A10G", 1, 24, 2.448),
    _row("g5.16xlarge", _N, "A10G", 1, 24, 4.096),
    _row("g5.12xlarge", _N, "A10G", 4, 24, 5.672),
    _row("g5.24xlarge", _N, "A10G", 4, 24, 8.144),
    _row("g5.48xlarge", _N, "A10G", 8, 24, 16.288),
    _row("g6.xlarge", _N, "L4", 1, 24, 0.8048),
    _row("g6.2xlarge", _N, "L4", 1, 24, 0.9776),
    _row("g6.4xlarge", _N, "L4", 1, 24, 1.3232),
    _row("g6.8xlarge", _N, "L4", 1, 24, 2.0144),
    _row("g6.16xlarge", _N, "L4", 1, 24, 3.3968),
    _row("g6.12xlarge", _N, "L4", 4, 24, 4.6016),
    _row("g6.24xlarge", _N, "L4", 4, 24, 6.6752),
    _row("g6.48xlarge", _N, "L4", 8, 24, 13.3504),
    _row("g6e.xlarge", _N, "L40S", 1, 48, 1.861),
    _row("g6e.2xlarge", _N, "L40S", 1, 48, 2.24208),
    _row("g6e.4xlarge", _N, "L40S", 1, 48, 3.00424),
    _row("g6e.8xlarge", _N, "L40S", 1, 48, 4.52856),
    _row("g6e.16xlarge", _N, "L40S", 1, 48, 7.57719),
    _row("g6e.12xlarge", _N, "L40S", 4, 48, 10.49264),
    _row("g6e.24xlarge", _N, "L40S", 4, 48, 15.06559),
    _row("g6e.48xlarge", _N, "L40S", 8, 48, 30.13118),
    # Inferentia2: 32 GiB per chip, 2 NeuronCores per chip.
    _row("inf2.xlarge", _AWS, "Inferentia2", 2, 16, 0.7582),
    _row("inf2.8xlarge", _AWS, "Inferentia2", 2, 16, 1.96786),
    _row("inf2.24xlarge", _AWS, "Inferentia2", 12, 16, 6.49063),
    _row("inf2.48xlarge", _AWS, "Inferentia2", 24, 16, 12.98127),
    # Trainium: 32 GiB per chip, 2 NeuronCores per chip.
    _row("trn1.2xlarge", _AWS, "Trainium", 2, 16, 1.34375),
    _row("trn1.32xlarge", _AWS, "Trainium", 32, 16, 21.5),
    _row("trn1n.32xlarge", _AWS, "Trainium", 32, 16, 24.78),
    # Trainium2: 96 GiB per chip, 8 NeuronCores per chip; no on-demand list price recorded.
    _row("trn2.48xlarge", _AWS, "Trainium2", 128, 12, None),
)
_BY_NAME = {t.name: t for t in CATALOGUE}


def lookup(name: str) -> InstanceType | None:
    """The catalogue entry for an instance type name, or None."""
    return _BY_NAME.get(name)


def cheaper_fits(current: InstanceType, devices: int, memory_gib_needed: float) -> InstanceType | None:
    """The cheapest priced type of the same vendor with `devices` devices of at least
    `memory_gib_needed` GiB each that is cheaper than `current`; None when there is none."""
    if current.dollars_per_hour is None:
        return None
    best: InstanceType | None = None
    for candidate in CATALOGUE:
        price = candidate.dollars_per_hour
        if (
            price is None
            or candidate.vendor != current.vendor
            or candidate.devices != devices
            or candidate.memory_gib_per_device < memory_gib_needed
            or price >= current.dollars_per_hour
        ):
            continue
        if best is None or price < (best.dollars_per_hour or 0.0):
            best = candidate
    return best
