"""A host simulated from a scenario: the environment `--demo` runs the exporter in.

It builds the real source classes on simulated hardware (a pynvml-compatible module, a fake
neuron-monitor executable), declares the scenario's host identity in place of metadata
services, and keeps the exporter offline: no cloud API, no price cache, no pod attribution.
Each source of the registry (`exporter.sources.registry.SOURCES`) has a simulator below,
by the same name; a test keeps the two in step.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from exporter.config.model import AttributionSettings, HostSettings
from exporter.sim.fake_nvml import FakeNvml, SimProcFs
from exporter.sim.neuron_monitor import ScenarioNeuronProcesses, write_fake_monitor_wrapper
from exporter.sim.scenario import Scenario, load_scenario
from exporter.sim.scontrol import write_fake_scontrol, write_job_mapping
from exporter.sources.base import Source
from exporter.sources.neuron import NeuronSource
from exporter.sources.nvml import NvmlSource
from exporter.sources.registry import BuildContext, SourceSpec

log = logging.getLogger(__name__)

# Team rules for the built-in scenarios' simulated users and services, used when no --config.file is given.
DEMO_CONFIG = Path(__file__).resolve().parent / "demo-config.yaml"


class SimulatedHost:
    """The scenario's host; satisfies `exporter.sources.registry.HostEnvironment`."""

    live = False

    def __init__(
        self,
        scenario: Scenario,
        reference: str = "",
        simulators: Mapping[str, Simulator] | None = None,
    ) -> None:
        """`reference` is the name or path the scenario was loaded from (a fake neuron-monitor reloads it)."""
        self.scenario = scenario
        self.reference = reference or scenario.name
        self._simulators = SIMULATORS if simulators is None else simulators
        self._workspace: tempfile.TemporaryDirectory[str] | None = None
        self._history: dict[str, float] = {}
        self._slurm_files: tuple[str, str] | None = None  # (scontrol, mapping directory), written once

    @classmethod
    def load(cls, name_or_path: str) -> SimulatedHost:
        """The host of a built-in scenario or a scenario file; ConfigInvalid names what is wrong."""
        return cls(load_scenario(name_or_path), name_or_path)

    @property
    def given_identity(self) -> HostSettings:
        """The scenario's `host:` section."""
        return self.scenario.host

    @property
    def description(self) -> str:
        """The scenario and its instance type."""
        host = self.scenario.host
        return f"simulated scenario {self.scenario.name!r} ({host.instance_type or 'no instance type'})"

    @property
    def default_config_file(self) -> str:
        """The scenario's own configuration (owned prices, Slurm rules), else team rules matching
        the built-in scenarios' users."""
        return self.scenario.demo_config or str(DEMO_CONFIG)

    def build_source(self, spec: SourceSpec, context: BuildContext) -> Source | None:
        """The source on the scenario's hardware; None when the scenario has none of it."""
        simulator = self._simulators.get(spec.name)
        source = simulator(self, context) if simulator is not None else None
        if source is None:
            level = logging.INFO if context.forced else logging.DEBUG
            log.log(level, "%s collector off: scenario %r simulates no such hardware", spec.name, self.scenario.name)
        return source

    def workspace(self) -> Path:
        """A temporary directory for simulated executables, removed by `close`."""
        if self._workspace is None:
            self._workspace = tempfile.TemporaryDirectory(prefix="accel-demo-")
        return Path(self._workspace.name)

    def remember_last_active(self, history: Mapping[str, float]) -> None:
        """Record when simulated devices last computed before the start (see `idle_history`)."""
        self._history.update(history)

    def idle_history(self) -> Mapping[str, float]:
        """Device UUID -> Unix time the scenario says it last computed, for the idle clock."""
        return dict(self._history)

    def attribution_settings(self, settings: AttributionSettings) -> AttributionSettings:
        """On a Slurm scenario, `settings` pointed at its simulated scontrol and job-mapping files
        (written once into the workspace); otherwise `settings` unchanged."""
        if self.scenario.slurm is None:
            return settings
        if self._slurm_files is None:
            folder = self.workspace()
            self._slurm_files = (
                str(write_fake_scontrol(folder, self.reference)),
                str(write_job_mapping(folder / "hpc-job-map", self.scenario)),
            )
        scontrol, mapping = self._slurm_files
        return replace(settings, slurm=replace(settings.slurm, scontrol=scontrol), hpc_job_mapping_dir=mapping)

    def close(self) -> None:
        """Remove the workspace."""
        if self._workspace is not None:
            self._workspace.cleanup()
            self._workspace = None


# Builds one source on the simulated host's hardware, or None when the scenario has none of it.
Simulator = Callable[[SimulatedHost, BuildContext], Source | None]


def simulated_nvml(host: SimulatedHost, context: BuildContext) -> Source | None:
    """NvmlSource on the pynvml-compatible fake; also for a scenario with no hardware at all."""
    scenario = host.scenario
    if not (scenario.gpus or scenario.nvml_missing or scenario.neuron is None):
        return None
    fake = FakeNvml(scenario, context.clock)
    host.remember_last_active(fake.last_active_history())
    return NvmlSource(fake.module, context.clock, SimProcFs(fake))


def simulated_neuron(host: SimulatedHost, context: BuildContext) -> Source | None:
    """NeuronSource running the fake neuron-monitor through a wrapper executable."""
    scenario = host.scenario
    if scenario.neuron is None:
        return None
    wrapper = write_fake_monitor_wrapper(host.workspace(), host.reference)
    processes = ScenarioNeuronProcesses(scenario, context.clock.time())
    settings = replace(context.config.neuron, monitor_path=str(wrapper))
    return NeuronSource(settings, context.clock, processes)


# Source name -> its simulator; every entry of the source registry needs one.
SIMULATORS: Mapping[str, Simulator] = MappingProxyType({"nvml": simulated_nvml, "neuron": simulated_neuron})
