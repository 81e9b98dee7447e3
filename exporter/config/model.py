"""The configuration file's schema as frozen dataclasses, one per top-level section."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Attribution rules one configuration may hold: matching stays cheap past this (literal rules are
# dict lookups), but parsing a file this large already takes seconds on a worker thread.
MAX_ATTRIBUTION_RULES = 50_000
WASTE_BASES = ("time", "sm")
LIFECYCLES = ("on-demand", "spot", "reserved", "savings-plan", "capacity-block")
RULE_KEYS = (
    "user",
    "unit",
    "command",
    "container",
    "container_name",
    "namespace",
    "pod",
    "pod_uid",
    "cgroup",
    "runtime_tag",
    "slurm_job_id",
    "slurm_account",
    "slurm_partition",
)


@dataclass(frozen=True)
class AccountingSettings:
    """How readings become states and money."""

    # At or below this utilization (0-1) a device is idle; 0.01 follows gpu-pruner's noise floor.
    idle_threshold: float = 0.01
    # A device no process holds is idle_free up to this utilization (0-1): monitoring agents and
    # driver housekeeping show 1-2 % on an otherwise unused GPU; 0.05 leaves headroom above that.
    noise_floor: float = 0.05
    # Waste is measured against this utilization (NVIDIA's SM-active 0.8 guidance).
    target_utilization: float = 0.8
    max_processes_per_device: int = 32
    export_processes: bool = True
    # Money counters are kept for at most this many (team, workload) pairs per device; the rest
    # are charged to (other, other). A pair not charged for pair_expiry_seconds folds into it.
    max_pairs_per_device: int = 20
    pair_expiry_seconds: float = 3600.0
    # What waste measures the target against: "time" (kernel time, NVML utilization) or "sm"
    # (SM activity through GPM, falling back to time on devices without it). Stays "time" until
    # "sm" is verified on hardware.
    waste_basis: str = "time"


@dataclass(frozen=True)
class HostSettings:
    """A static host identity; any field given here overrides what metadata services say."""

    provider: str | None = None
    instance_type: str | None = None
    instance_id: str | None = None
    region: str | None = None
    zone: str | None = None
    lifecycle: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class OwnedHardware:
    """What an owned machine (or one device model) cost: amortized linearly over its lifetime."""

    purchase_price: float  # USD, for the whole host or for one device of the model
    lifetime_years: float
    residual_value: float = 0.0  # USD expected back at the end of the lifetime
    overhead_per_device_hour: float = 0.0  # USD: space, network, staff


@dataclass(frozen=True)
class OwnedSettings:
    """Owned (on-prem) hardware: amortization, hosting overhead and electricity."""

    host: OwnedHardware | None = None  # the whole host, split over its accelerators
    device_models: tuple[tuple[str, OwnedHardware], ...] = ()  # per device model; wins over host
    electricity_dollars_per_kwh: float = 0.0
    pue: float = 1.0  # facility power / IT power: cooling and power delivery on top of the device


@dataclass(frozen=True)
class CarbonSchedule:
    """Grid intensity by period (`carbon.schedule_file`): sorted, non-overlapping [start, end) in Unix time."""

    path: str
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    grams_per_kwh: tuple[float, ...]

    def at(self, unix_time: float) -> float | None:
        """The intensity in force at `unix_time`, or None outside every period."""
        index = bisect.bisect_right(self.starts, unix_time) - 1
        if index >= 0 and unix_time < self.ends[index]:
            return self.grams_per_kwh[index]
        return None

    def overlaps(self, start: float, end: float) -> list[tuple[float, float]]:
        """(seconds, g per kWh) for each period that covers part of [start, end); the rest is uncovered."""
        out: list[tuple[float, float]] = []
        index = max(0, bisect.bisect_right(self.starts, start) - 1)
        while index < len(self.starts) and self.starts[index] < end:
            seconds = min(end, self.ends[index]) - max(start, self.starts[index])
            if seconds > 0:
                out.append((seconds, self.grams_per_kwh[index]))
            index += 1
        return out


@dataclass(frozen=True)
class CarbonSettings:
    """Grid carbon intensity (g CO2e per kWh): a schedule, a fixed value, per-region overrides, the built-in table."""

    grid_intensity: float | None = None  # wins over the region table when set
    regions: tuple[tuple[str, float], ...] = ()  # overrides for the built-in AWS region table
    pue: float | None = None  # None: pricing.owned.pue on an owned host, else 1.0
    schedule: CarbonSchedule | None = None  # wins over the rest where one of its periods covers the time


@dataclass(frozen=True)
class PricingSettings:
    """Where prices come from, in order: config, live cloud price APIs, the built-in table."""

    instance_types: tuple[tuple[str, float], ...] = ()
    device_models: tuple[tuple[str, float], ...] = ()
    # Overrides the detected lifecycle for pricing, e.g. `reserved` with an effective rate above.
    lifecycle: str | None = None
    aws_enabled: bool = True
    aws_timeout_seconds: float = 5.0
    aws_endpoint_url: str | None = None
    refresh_seconds: float = 86400.0
    spot_refresh_seconds: float = 1800.0
    # How the instance price is split over accelerators: "even" (all of it, divided by the count)
    # or "opencost" (only the GPUs' share under OpenCost's default CPU/RAM/GPU unit-price weights).
    split: str = "even"
    # Owned hardware (price_source "owned"); a configured instance_types price still wins.
    owned: OwnedSettings | None = None


@dataclass(frozen=True)
class AttributionRule:
    """Facts to match (all must match; values are shell-style globs) and the owner they give."""

    match: tuple[tuple[str, str], ...]
    team: str
    workload: str = ""


@dataclass(frozen=True)
class SlurmSettings:
    """Where a Slurm job's account and partition come from: `scontrol show job <id> --json`."""

    # A command name looked up on PATH at each lookup, or an absolute path; "" turns lookups off.
    scontrol: str = "scontrol"
    timeout_seconds: float = 5.0
    cache_entries: int = 4096
    # A job's answer is asked again after this long (an admin may move a job to another account);
    # a failed lookup is retried after retry_seconds.
    refresh_seconds: float = 600.0
    retry_seconds: float = 60.0


@dataclass(frozen=True)
class AttributionSettings:
    """How processes and instances map to teams and workloads."""

    rules: tuple[AttributionRule, ...] = ()
    default_team: str = ""
    default_workload: str = ""
    team_tag: str = "Team"
    workload_tag: str = "Workload"
    max_label_values: int = 100
    max_label_length: int = 64
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    # dcgm-exporter's --hpc-job-mapping-dir: one file per GPU index listing the jobs on it.
    hpc_job_mapping_dir: str | None = None


@dataclass(frozen=True)
class MetadataSettings:
    """Cloud metadata services used to learn the host's identity."""

    providers: tuple[str, ...] = ("aws", "gcp", "azure")
    timeout_seconds: float = 1.0
    aws_endpoint: str = "http://169.254.169.254"
    gcp_endpoint: str = "http://metadata.google.internal"
    azure_endpoint: str = "http://169.254.169.254"
    refresh_seconds: float = 3600.0
    # Read instance tags from IMDS (needs InstanceMetadataTags=enabled; a 404 means not enabled).
    aws_instance_tags: bool = True
    # When IMDS tags are not enabled, ask EC2 DescribeTags instead (needs ec2:DescribeTags).
    aws_describe_tags: bool = True


@dataclass(frozen=True)
class NeuronSettings:
    """The neuron-monitor subprocess."""

    monitor_path: str = "/opt/aws/neuron/bin/neuron-monitor"
    period_seconds: float = 5.0


@dataclass(frozen=True)
class KubernetesSettings:
    """Pod attribution through the kubelet pod-resources API."""

    enabled: bool | None = None  # None: on when the socket exists
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    refresh_seconds: float = 30.0


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    accounting: AccountingSettings = field(default_factory=AccountingSettings)
    host: HostSettings = field(default_factory=HostSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    neuron: NeuronSettings = field(default_factory=NeuronSettings)
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    carbon: CarbonSettings = field(default_factory=CarbonSettings)
