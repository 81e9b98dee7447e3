"""The source registry: every device source, what turns it on, and how it is built on a real host.

Each `SourceSpec` declares a source's name (the `collector` label of its self-metrics), its help
text, whether it is on by default, off, or `auto` (on when its hardware or binary is present),
the extra flags it reads and the config section it is built from. The command line
(`--[no-]collector.<name>`, `ACCEL_COLLECTOR_<NAME>`, the extra flags and their `ACCEL_*`
variables) and the daemon's assembly are generated from `SOURCES`, as node_exporter's
`registerCollector` does, so a new accelerator kind is one entry here (and its simulator in
`exporter/sim/host.py`) with no change to the CLI or the daemon.

Where a source finds its devices is the host environment's job: `RealHost` here builds each
source for the real hardware; `exporter.sim.host.SimulatedHost` builds the same source classes
on a scenario's simulated hardware.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from exporter.clock import Clock
from exporter.config.model import AttributionSettings, Config, HostSettings, NeuronSettings
from exporter.sources.base import Source
from exporter.sources.neuron import NeuronSource, neuron_auto_enabled
from exporter.sources.nvml import NvmlSource, load_pynvml
from exporter.sources.procfs import ProcFs

log = logging.getLogger(__name__)

Default = Literal["on", "off", "auto"]


@dataclass(frozen=True)
class SourceFlag:
    """A flag of one source beyond `--[no-]collector.<name>`, with its environment variable."""

    flag: str  # "--neuron.monitor-path"
    variable: str  # "ACCEL_NEURON_MONITOR_PATH"
    help: str
    default: str  # as --help shows it; the source applies it when the flag is not given
    # Returns the value, or raises ValueError("expected ..., found ...") naming what is wrong.
    check: Callable[[str], str]
    metavar: str = "VALUE"


@dataclass(frozen=True)
class BuildContext:
    """What a source is built from: the clock, the configuration and the command line's choices."""

    clock: Clock
    config: Config
    # Values given for the source's extra flags (or their variables), by flag name.
    values: Mapping[str, str] = field(default_factory=dict)
    # True when `--collector.<name>` forced the source on: built even where its hardware seems absent.
    forced: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """One source's declaration; see the module docstring."""

    name: str
    help: str
    default: Default
    # Builds the source for real hardware.
    build: Callable[[BuildContext], Source]
    # `auto`: why the hardware is absent (a log line), or None when it is present; asked before building.
    absent: Callable[[BuildContext], str | None] | None = None
    # `on`: after start, why the source found no hardware (e.g. no driver), or None. A source not
    # forced on is then dropped when another source runs, rather than failing for ever beside it.
    absent_after_start: Callable[[Source], str | None] | None = None
    # How --help words the default of an `auto` source ("on when ... exists").
    auto_help: str = ""
    flags: tuple[SourceFlag, ...] = ()
    # The config file section it is built from: changing it takes effect at the next restart.
    config_section: str | None = None

    @property
    def flag(self) -> str:
        """`--collector.<name>` (argparse adds `--no-collector.<name>`)."""
        return f"--collector.{self.name}"

    @property
    def variable(self) -> str:
        """`ACCEL_COLLECTOR_<NAME>`: the flag's environment fallback."""
        return "ACCEL_COLLECTOR_" + self.name.upper().replace("-", "_")

    def default_help(self) -> str:
        """The default as --help says it: `default on`, `default: on when the binary exists`."""
        return f"default: on when {self.auto_help}" if self.default == "auto" else f"default {self.default}"


class HostEnvironment(Protocol):
    """Where the exporter runs: a real host, or one simulated from a scenario.

    The daemon builds its sources through it, and the context provider asks it whether live
    lookups (metadata services, cloud price APIs, the price cache) apply and which identity a
    simulated host declares.
    """

    @property
    def live(self) -> bool:
        """True on real hardware: metadata services, cloud APIs and the price cache may be used."""
        ...

    @property
    def given_identity(self) -> HostSettings | None:
        """The identity a simulated host declares; None on a real host (it is discovered)."""
        ...

    @property
    def description(self) -> str:
        """What the host is, for the start-up log."""
        ...

    @property
    def default_config_file(self) -> str | None:
        """The config file used when none is given (team rules matching a scenario's users)."""
        ...

    def build_source(self, spec: SourceSpec, context: BuildContext) -> Source | None:
        """The source on this host's hardware, or None (logged) when the host has none of it."""
        ...

    def idle_history(self) -> Mapping[str, float]:
        """Device UUID -> Unix time it last computed, before the exporter started (a scenario's past)."""
        ...

    def attribution_settings(self, settings: AttributionSettings) -> AttributionSettings:
        """`settings` as this host applies them: a simulated Slurm host points them at its simulated
        scontrol and job-mapping directory."""
        ...

    def close(self) -> None:
        """Remove what building the sources left behind (temporary files)."""
        ...


class RealHost:
    """The host the exporter runs on: real drivers, real binaries, /proc."""

    live = True
    given_identity: HostSettings | None = None
    description = "real hardware"
    default_config_file: str | None = None

    def build_source(self, spec: SourceSpec, context: BuildContext) -> Source | None:
        """Build `spec` for the real hardware; an `auto` source whose hardware is absent is skipped."""
        if spec.absent is not None and spec.default == "auto" and not context.forced:
            why = spec.absent(context)
            if why is not None:
                log.info("%s collector off: %s (use %s to force it on)", spec.name, why, spec.flag)
                return None
        return spec.build(context)

    def idle_history(self) -> Mapping[str, float]:
        """Nothing: a real host's past is in the state directory, if anywhere."""
        return {}

    def attribution_settings(self, settings: AttributionSettings) -> AttributionSettings:
        """The configured settings: the real scontrol and mapping directory."""
        return settings

    def close(self) -> None:
        """Nothing to remove."""


def enabled_specs(registry: tuple[SourceSpec, ...], choices: Mapping[str, bool]) -> list[SourceSpec]:
    """The specs to build: those not turned off, by `--no-collector.<name>` or by an `off` default."""
    return [s for s in registry if choices.get(s.name, s.default != "off")]


# --- the built-in sources -------------------------------------------------------------------------


def _build_nvml(context: BuildContext) -> Source:
    return NvmlSource(load_pynvml, context.clock, ProcFs())


def _nvml_absent_after_start(source: Source) -> str | None:
    return "no NVIDIA driver on this host" if isinstance(source, NvmlSource) and source.no_driver else None


MONITOR_PATH_FLAG = "--neuron.monitor-path"


def absolute_path(text: str) -> str:
    """An absolute path (neuron-monitor is rarely on PATH)."""
    if not os.path.isabs(text):
        raise ValueError(f"expected an absolute path, found {text!r}")
    return text


def neuron_settings(context: BuildContext) -> NeuronSettings:
    """The config file's `neuron:` section with `--neuron.monitor-path` applied."""
    path = context.values.get(MONITOR_PATH_FLAG)
    return replace(context.config.neuron, monitor_path=path) if path else context.config.neuron


def _neuron_absent(context: BuildContext) -> str | None:
    settings = neuron_settings(context)
    return None if neuron_auto_enabled(settings) else f"{settings.monitor_path} not found"


def _build_neuron(context: BuildContext) -> Source:
    return NeuronSource(neuron_settings(context), context.clock, ProcFs())


NVML = SourceSpec(
    name="nvml",
    help="NVIDIA GPUs through NVML",
    default="on",
    build=_build_nvml,
    absent_after_start=_nvml_absent_after_start,
)
NEURON = SourceSpec(
    name="neuron",
    help="AWS NeuronCores through neuron-monitor",
    default="auto",
    build=_build_neuron,
    absent=_neuron_absent,
    auto_help="the binary exists",
    flags=(
        SourceFlag(
            MONITOR_PATH_FLAG,
            "ACCEL_NEURON_MONITOR_PATH",
            "absolute path of neuron-monitor",
            NeuronSettings().monitor_path,
            absolute_path,
            metavar="PATH",
        ),
    ),
    config_section="neuron",
)
# Every source, in the order they are built and polled.
SOURCES: tuple[SourceSpec, ...] = (NVML, NEURON)
