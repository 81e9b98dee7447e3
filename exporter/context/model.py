"""Frozen context values handed to accounting on every poll."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from exporter.config.model import CarbonSchedule, HostSettings
from exporter.readings import ProcessReading

UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class HostIdentity:
    """The instance the exporter runs on, and where that knowledge came from (`source`)."""

    provider: str = "unknown"
    instance_type: str = ""
    instance_id: str = ""
    region: str = ""
    zone: str = ""
    lifecycle: str = "on-demand"
    tags: tuple[tuple[str, str], ...] = ()
    # Where the identity came from: aws-imds, gcp-metadata, azure-imds, config, demo, neuron-monitor,
    # none; `+config` is appended when the static `host:` section overrode some fields.
    source: str = "none"


class HostView(Protocol):
    """What the context needs of the host environment (real, or simulated from a scenario)."""

    @property
    def live(self) -> bool:
        """True on a real host: metadata services, cloud price APIs and the price cache may be used."""
        ...

    @property
    def given_identity(self) -> HostSettings | None:
        """The identity a simulated host declares; None on a real host (it is discovered)."""
        ...


@dataclass(frozen=True)
class CarbonQuote:
    """How a device's kWh become grams of CO2e: grid intensity (a schedule, else a fixed value) x PUE."""

    grid_grams_per_kwh: float | None = None  # the fixed intensity; None when neither config nor table knows it
    source: str = ""  # where the fixed intensity came from: config, config-region, builtin
    pue: float = 1.0
    schedule: CarbonSchedule | None = None

    @property
    def known(self) -> bool:
        """Whether any intensity is configured or known for this host."""
        return self.grid_grams_per_kwh is not None or self.schedule is not None

    def in_force(self, unix_time: float | None) -> tuple[float, str] | None:
        """(grid g per kWh, source) at `unix_time`: the schedule's period, else the fixed value; None if neither."""
        scheduled = self.schedule.at(unix_time) if self.schedule is not None and unix_time is not None else None
        if scheduled is not None:
            return scheduled, "schedule"
        if self.grid_grams_per_kwh is not None:
            return self.grid_grams_per_kwh, self.source
        return None

    def grams(self, kwh: float, start: float | None, end: float | None) -> float:
        """Grams for `kwh` drawn evenly over [start, end) (Unix time; None: unknown, the fixed value applies).

        Each schedule period gets the share of the energy its part of the interval holds; the
        rest is at the fixed intensity, or not counted when there is none.
        """
        fixed = self.grid_grams_per_kwh
        if self.schedule is None or start is None or end is None or end <= start:
            return kwh * fixed * self.pue if fixed is not None else 0.0
        seconds = end - start
        covered = self.schedule.overlaps(start, end)
        grams = sum(kwh * part / seconds * intensity for part, intensity in covered)
        uncovered = seconds - sum(part for part, _ in covered)
        if fixed is not None and uncovered > 0:
            grams += kwh * uncovered / seconds * fixed
        return grams * self.pue


@dataclass(frozen=True)
class PriceQuote:
    """The instance's hourly price in USD, or None when unknown (never 0), with its source.

    `source` is one of config, aws-pricing-api, aws-spot, builtin, none. A live price read back
    from the on-disk cache keeps its original source; `as_of` is then the day it was fetched.
    `as_of` dates built-in and live prices (YYYY-MM-DD) so stale ones are visible.
    """

    dollars_per_hour: float | None = None
    source: str = "none"
    as_of: str = ""
    device_model_prices: tuple[tuple[str, float], ...] = ()
    # The capacity type this price is for (on-demand, spot, reserved, ...). It differs from the
    # host's lifecycle when a fallback priced e.g. a spot host at the on-demand list price.
    lifecycle: str = "on-demand"
    # Share of the instance price carried by its accelerators: 1.0 with pricing.split "even",
    # the OpenCost weighting (GPU 0.95 vs vCPU and RAM unit prices) with "opencost".
    accelerator_share: float = 1.0
    # Unix time a live price was fetched (None for config, built-in and unknown prices).
    fetched_at: float | None = None
    # True when the price was read back from the on-disk cache rather than fetched this run.
    cached: bool = False
    # Owned hardware (source "owned"): hosting overhead added to each device's hourly price per
    # price unit, and what a kWh the device draws costs: the tariff times the facility's PUE.
    device_overhead_per_hour: float = 0.0
    energy_dollars_per_kwh: float = 0.0
    # How the energy a device draws becomes grams of CO2e; None when no intensity is known.
    carbon: CarbonQuote | None = None

    @property
    def carbon_grams_per_kwh(self) -> float | None:
        """The fixed grid intensity x PUE (the schedule aside); None when unknown."""
        if self.carbon is None or self.carbon.grid_grams_per_kwh is None:
            return None
        return self.carbon.grid_grams_per_kwh * self.carbon.pue

    @property
    def known(self) -> bool:
        """Whether an instance price is known (device-model prices alone do not count)."""
        return self.dollars_per_hour is not None


@dataclass(frozen=True)
class Owner:
    """Team and workload labels (already sanitised and bounded) plus the facts that led to them."""

    team: str = UNASSIGNED
    workload: str = ""
    pod: str = ""
    namespace: str = ""
    container: str = ""
    unit: str = ""
    slurm_job_id: str = ""


class PodFacts(Protocol):
    """A pod holding a device (exporter.context.owner.kubernetes.PodRef has these fields)."""

    @property
    def namespace(self) -> str: ...

    @property
    def pod(self) -> str: ...

    @property
    def container(self) -> str: ...


class Attributor(Protocol):
    """Maps owner facts (process, instance tags) to a team and workload."""

    def process_owner(self, process: ProcessReading) -> Owner:
        """The owner of one process; team is '' when no rule matched."""
        ...

    def pod_owner(self, pod: PodFacts) -> Owner:
        """The owner of a pod holding a device with no process on it; team '' when no rule matched."""
        ...

    def job_owner(self, job_id: str) -> Owner:
        """The owner of a Slurm job holding a device with no visible process; team '' when unknown."""
        ...

    def host_owner(self, identity: HostIdentity) -> Owner:
        """The instance's owner from tags or the configured default; team UNASSIGNED when neither."""
        ...


@dataclass(frozen=True)
class HostContext:
    """What accounting needs besides readings: identity, price and attribution."""

    identity: HostIdentity
    price: PriceQuote
    attributor: Attributor
