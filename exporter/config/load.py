"""Load and validate the YAML configuration file."""

from __future__ import annotations

from typing import Any

from exporter.config.files import NotRegularFile, read_regular_file
from exporter.config.model import (
    LIFECYCLES,
    MAX_ATTRIBUTION_RULES,
    RULE_KEYS,
    WASTE_BASES,
    AccountingSettings,
    AttributionRule,
    AttributionSettings,
    Config,
    HostSettings,
    KubernetesSettings,
    MetadataSettings,
    NeuronSettings,
    PricingSettings,
    SlurmSettings,
)
from exporter.config.owned import parse_carbon, parse_owned
from exporter.config.reader import ConfigInvalid, Reader, YamlProblem, yaml_document
from exporter.numbers import finite_number

MAX_CONFIG_BYTES = 4 * 1024 * 1024


def load_config(path: str | None) -> Config:
    """Read and validate the file at `path` (None: defaults). Raises ConfigInvalid with every error."""
    if path is None:
        return Config()
    try:
        raw = read_regular_file(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigInvalid([f"file not found; check --config.file (given {path!r})"], path) from None
    except NotRegularFile as exc:
        raise ConfigInvalid([f"{exc}; point --config.file at a regular file"], path) from None
    except OSError as exc:
        raise ConfigInvalid([f"cannot read the file: {exc.strerror}"], path) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigInvalid(["the file is over 4 MiB; a configuration must be under 4 MiB"], path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigInvalid([f"not UTF-8 text (bad byte at offset {exc.start})"], path) from None
    try:
        document = yaml_document(text)
    except YamlProblem as exc:
        raise ConfigInvalid([str(exc)], path) from None
    return parse_config(document, source=path)


def parse_config(document: Any, source: str = "") -> Config:
    """Validate an already parsed document; raises ConfigInvalid listing every problem."""
    errors: list[str] = []
    top = Reader(document, "", errors)
    config = Config(
        accounting=_accounting(top.section("accounting")),
        host=_host(top.section("host")),
        pricing=_pricing(top.section("pricing")),
        attribution=_attribution(top.section("attribution")),
        metadata=_metadata(top.section("metadata")),
        neuron=_neuron(top.section("neuron")),
        kubernetes=_kubernetes(top.section("kubernetes")),
        carbon=parse_carbon(top.section("carbon")),
    )
    top.finish()
    if errors:
        raise ConfigInvalid(errors, source)
    return config


def _accounting(r: Reader) -> AccountingSettings:
    d = AccountingSettings()
    out = AccountingSettings(
        idle_threshold=r.number("idle_threshold", d.idle_threshold, minimum=0.0, maximum=1.0),
        noise_floor=_noise_floor(r, d.noise_floor),
        target_utilization=r.number("target_utilization", d.target_utilization, minimum=0.01, maximum=1.0),
        max_processes_per_device=r.integer(
            "max_processes_per_device", d.max_processes_per_device, minimum=0, maximum=10000
        ),
        export_processes=r.boolean("export_processes", d.export_processes),
        max_pairs_per_device=r.integer("max_pairs_per_device", d.max_pairs_per_device, minimum=1, maximum=10000),
        pair_expiry_seconds=r.duration("pair_expiry", d.pair_expiry_seconds, minimum=60),
        waste_basis=r.string("waste_basis", d.waste_basis, choices=WASTE_BASES),
    )
    r.finish()
    return out


def _noise_floor(r: Reader, default: float) -> float:
    """0 <= noise_floor < 1: at 1 every device nobody holds would be idle_free whatever it computes."""
    value = r.raw("noise_floor")
    if value is None:
        return default
    number = finite_number(value)
    if number is None or not 0.0 <= number < 1.0:
        r.error("noise_floor", "a number from 0 up to, not including, 1 (e.g. 0.05)", value)
        return default
    return number


def _host(r: Reader) -> HostSettings:
    out = HostSettings(
        provider=r.optional_string("provider", choices=("aws", "gcp", "azure", "static")),
        instance_type=r.optional_string("instance_type"),
        instance_id=r.optional_string("instance_id"),
        region=r.optional_string("region"),
        zone=r.optional_string("zone"),
        lifecycle=r.optional_string("lifecycle", choices=LIFECYCLES),
        tags=tuple(sorted(r.string_map("tags").items())),
    )
    r.finish()
    return out


def _pricing(r: Reader) -> PricingSettings:
    d = PricingSettings()
    aws = r.section("aws")
    out = PricingSettings(
        instance_types=tuple(sorted(r.price_map("instance_types").items())),
        device_models=tuple(sorted(r.price_map("device_models").items())),
        lifecycle=r.optional_string("lifecycle", choices=LIFECYCLES),
        aws_enabled=aws.boolean("enabled", d.aws_enabled),
        aws_timeout_seconds=aws.duration("timeout", d.aws_timeout_seconds, minimum=0.1, maximum=120),
        aws_endpoint_url=aws.optional_string("endpoint_url"),
        refresh_seconds=r.duration("refresh_interval", d.refresh_seconds, minimum=60),
        spot_refresh_seconds=r.duration("spot_refresh_interval", d.spot_refresh_seconds, minimum=60),
        split=r.string("split", d.split, choices=("even", "opencost")),
        owned=parse_owned(r),
    )
    aws.finish()
    r.finish()
    return out


def _attribution(r: Reader) -> AttributionSettings:
    d = AttributionSettings()
    rules: list[AttributionRule] = []
    items = r.items("rules")
    if len(items) > MAX_ATTRIBUTION_RULES:
        r.problem(
            "rules",
            f"{len(items)} rules; at most {MAX_ATTRIBUTION_RULES} are allowed: merge rules that give the same "
            "team with globs (e.g. {user: 'ml-*'}) or attribute by namespace or unit",
        )
        items = []
    for item in items:
        match = item.string_map("match")
        for key in match:
            if key not in RULE_KEYS and not key.startswith("tag:"):
                item.problem(f"match.{key}", "unknown fact; use one of " + ", ".join(RULE_KEYS) + " or tag:<Key>")
        if not match:
            item.problem("match", "a rule needs at least one fact to match, e.g. {user: alice}")
        team = item.string("team", "")
        if not team:
            item.problem("team", "every rule needs a non-empty team")
        rules.append(
            AttributionRule(match=tuple(sorted(match.items())), team=team, workload=item.string("workload", ""))
        )
        item.finish()
    tags = r.section("tag_keys")
    mapping_dir = r.optional_string("hpc_job_mapping_dir")
    if mapping_dir is not None and not mapping_dir.startswith("/"):
        r.problem(
            "hpc_job_mapping_dir",
            f"must be an absolute path (dcgm-exporter's --hpc-job-mapping-dir), found {mapping_dir!r}",
        )
        mapping_dir = None
    out = AttributionSettings(
        rules=tuple(rules),
        default_team=r.string("default_team", d.default_team),
        default_workload=r.string("default_workload", d.default_workload),
        team_tag=tags.string("team", d.team_tag),
        workload_tag=tags.string("workload", d.workload_tag),
        max_label_values=r.integer("max_label_values", d.max_label_values, minimum=1, maximum=100000),
        max_label_length=r.integer("max_label_length", d.max_label_length, minimum=8, maximum=1024),
        slurm=_slurm(r.section("slurm")),
        hpc_job_mapping_dir=mapping_dir or None,
    )
    tags.finish()
    r.finish()
    return out


def _slurm(r: Reader) -> SlurmSettings:
    d = SlurmSettings()
    scontrol = r.string("scontrol", d.scontrol)
    if "/" in scontrol and not scontrol.startswith("/"):
        r.problem("scontrol", f"a command name found on PATH or an absolute path, found {scontrol!r}")
        scontrol = d.scontrol
    out = SlurmSettings(
        scontrol=scontrol,
        timeout_seconds=r.duration("timeout", d.timeout_seconds, minimum=0.1, maximum=120),
        cache_entries=r.integer("cache_entries", d.cache_entries, minimum=1, maximum=1_000_000),
        refresh_seconds=r.duration("refresh_interval", d.refresh_seconds, minimum=1),
        retry_seconds=r.duration("retry_interval", d.retry_seconds, minimum=1),
    )
    r.finish()
    return out


def _metadata(r: Reader) -> MetadataSettings:
    d = MetadataSettings()
    out = MetadataSettings(
        providers=r.string_list("providers", d.providers, choices=("aws", "gcp", "azure")),
        timeout_seconds=r.duration("timeout", d.timeout_seconds, minimum=0.05, maximum=30),
        aws_endpoint=r.string("aws_endpoint", d.aws_endpoint),
        gcp_endpoint=r.string("gcp_endpoint", d.gcp_endpoint),
        azure_endpoint=r.string("azure_endpoint", d.azure_endpoint),
        refresh_seconds=r.duration("refresh_interval", d.refresh_seconds, minimum=10),
        aws_instance_tags=r.boolean("aws_instance_tags", d.aws_instance_tags),
        aws_describe_tags=r.boolean("aws_describe_tags", d.aws_describe_tags),
    )
    r.finish()
    return out


def _neuron(r: Reader) -> NeuronSettings:
    d = NeuronSettings()
    path = r.string("monitor_path", d.monitor_path)
    if path and not path.startswith("/"):
        r.problem("monitor_path", f"must be an absolute path (neuron-monitor is rarely on PATH), found {path!r}")
    out = NeuronSettings(
        monitor_path=path, period_seconds=r.duration("period", d.period_seconds, minimum=1, maximum=300)
    )
    r.finish()
    return out


def _kubernetes(r: Reader) -> KubernetesSettings:
    d = KubernetesSettings()
    out = KubernetesSettings(
        enabled=r.optional_boolean("enabled"),
        pod_resources_socket=r.string("pod_resources_socket", d.pod_resources_socket),
        refresh_seconds=r.duration("refresh_interval", d.refresh_seconds, minimum=1),
    )
    r.finish()
    return out
