"""Configuration: the YAML file's schema, its validation and loading."""

from exporter.config.load import load_config, parse_config
from exporter.config.model import (
    AccountingSettings,
    AttributionRule,
    AttributionSettings,
    Config,
    HostSettings,
    KubernetesSettings,
    MetadataSettings,
    NeuronSettings,
    PricingSettings,
)
from exporter.config.reader import ConfigInvalid, parse_duration

__all__ = [
    "AccountingSettings",
    "AttributionRule",
    "AttributionSettings",
    "Config",
    "ConfigInvalid",
    "HostSettings",
    "KubernetesSettings",
    "MetadataSettings",
    "NeuronSettings",
    "PricingSettings",
    "load_config",
    "parse_config",
    "parse_duration",
]
