"""The source registry drives the command line and the daemon; the host environment is the one seam for --demo.

A test-only accelerator kind, declared by one `SourceSpec`, gets its `--[no-]collector.<name>`
flag, its environment variables, its own flag and its self-metrics without any change to
cli.py, environment.py or daemon.py.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from exporter.cli import build_parser, options_from_args
from exporter.clock import Clock, ManualClock
from exporter.config import Config, HostSettings, parse_config
from exporter.context.provider import ContextProvider
from exporter.daemon import Daemon, Options, host_environment, restart_sections
from exporter.environment import environment_problems, unknown_variables, variables
from exporter.exposition.render import Renderer
from exporter.readings import DeviceIdentity, DeviceReading, SourceReport
from exporter.sim.host import SIMULATORS, SimulatedHost
from exporter.sim.scenario import Scenario, parse_scenario
from exporter.sources.base import Source
from exporter.sources.registry import SOURCES, BuildContext, RealHost, SourceFlag, SourceSpec, absolute_path

DEVICE_FLAG = "--fakeaccel.device-file"


class FileAccelerator:
    """A test-only accelerator kind: its "hardware" is a file holding the utilization (0-1)."""

    name = "fakeaccel"

    def __init__(self, path: Path, clock: Clock) -> None:
        self._path = path
        self._clock = clock

    async def start(self) -> None:
        """Nothing to start."""

    async def poll(self) -> SourceReport:
        """One device, busy as the file says; a missing file is a failed poll."""
        now = self._clock.time()
        try:
            utilization = float(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return SourceReport(self.name, (), False, 0.0, now, (("unreadable", 1),), complete=False)
        identity = DeviceIdentity("fakeaccel0", "fa-0", "test", "FakeAccel 1", "gpu")
        reading = DeviceReading(
            identity, up=True, busy_seconds=utilization, covered_seconds=1.0, utilization=utilization
        )
        return SourceReport(self.name, (reading,), True, 0.001, now)

    async def stop(self) -> None:
        """Nothing to stop."""


def _device_file(context: BuildContext) -> Path:
    return Path(context.values.get(DEVICE_FLAG, "/nonexistent/fakeaccel"))


def _absent(context: BuildContext) -> str | None:
    return None if _device_file(context).is_file() else f"{_device_file(context)} not found"


FAKE = SourceSpec(
    name="fakeaccel",
    help="a test-only accelerator",
    default="auto",
    build=lambda context: FileAccelerator(_device_file(context), context.clock),
    absent=_absent,
    auto_help="its device file exists",
    flags=(SourceFlag(DEVICE_FLAG, "ACCEL_FAKEACCEL_DEVICE_FILE", "its device file", "none", absolute_path),),
)
REGISTRY = (*SOURCES, FAKE)


def test_a_registry_entry_yields_its_flags_variables_and_help() -> None:
    text = build_parser(REGISTRY).format_help()
    for words in (
        "--collector.fakeaccel, --no-collector.fakeaccel",
        "a test-only accelerator (default: on when its device file exists; env ACCEL_COLLECTOR_FAKEACCEL)",
        "--fakeaccel.device-file",
        "ACCEL_FAKEACCEL_DEVICE_FILE",
    ):
        assert words in " ".join(text.split()), words
    assert "fakeaccel" not in build_parser().format_help()  # only the registry given has it
    assert {"ACCEL_COLLECTOR_FAKEACCEL", "ACCEL_FAKEACCEL_DEVICE_FILE"} <= set(variables(REGISTRY))
    assert unknown_variables({"ACCEL_FAKEACCEL_DEVICE_FILE": "/x"}, REGISTRY) == []
    assert unknown_variables({"ACCEL_FAKEACCEL_DEVICE_FILE": "/x"}) == ["ACCEL_FAKEACCEL_DEVICE_FILE"]
    # Refused like the built-in sources' variables, naming the variable and what is expected.
    problems = environment_problems(
        {"ACCEL_COLLECTOR_FAKEACCEL": "maybe", "ACCEL_FAKEACCEL_DEVICE_FILE": "x"}, REGISTRY
    )
    assert [p.split(":")[0] for p in problems] == ["ACCEL_COLLECTOR_FAKEACCEL", "ACCEL_FAKEACCEL_DEVICE_FILE"]
    assert "expected an absolute path" in problems[1]


def test_a_source_flag_is_checked_and_handed_to_the_build() -> None:
    parser = build_parser(REGISTRY)
    with pytest.raises(ValueError, match=f"^{DEVICE_FLAG}: expected an absolute path"):
        options_from_args(parser.parse_args([DEVICE_FLAG, "relative/file"]), REGISTRY)
    options = options_from_args(parser.parse_args(["--no-collector.nvml", DEVICE_FLAG, "/dev/fake"]), REGISTRY)
    assert options.collectors == {"nvml": False}
    assert options.source_values == {DEVICE_FLAG: "/dev/fake"}


def _options(registry_args: list[str]) -> Options:
    return options_from_args(build_parser(REGISTRY).parse_args(registry_args), REGISTRY)


async def _scraped(daemon: Daemon) -> str:
    """Build, start and poll the daemon's sources twice; the text a scrape would return."""
    daemon._build_sources()
    daemon.provider = ContextProvider(daemon.config, daemon.clock, daemon.environment)
    try:
        for source in daemon.sources:
            await source.start()
        await daemon.poll_once()
        assert isinstance(daemon.clock, ManualClock)
        daemon.clock.advance(1.0)
        await daemon.poll_once()
    finally:
        for source in daemon.sources:
            await source.stop()
    snapshot = daemon.cache.latest
    assert snapshot is not None
    return Renderer(process_metrics=False).plain(snapshot, False).body.decode()


async def test_an_entry_becomes_a_collector_with_self_metrics(tmp_path: Path) -> None:
    device = tmp_path / "fakeaccel0"
    device.write_text("0.25", encoding="utf-8")
    options = _options(["--no-collector.nvml", "--no-collector.neuron", DEVICE_FLAG, str(device)])
    text = await _scraped(Daemon(options, Config(), ManualClock(), RealHost(), REGISTRY))
    assert 'accel_exporter_collector_success{collector="fakeaccel"} 1' in text
    assert 'accel_exporter_collector_duration_seconds{collector="fakeaccel"}' in text
    assert 'accel_utilization_ratio{device="fakeaccel0"} 0.25' in text
    assert 'collector="nvml"' not in text  # turned off by its flag


async def test_auto_follows_the_hardware_and_the_flag_forces_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    absent = tmp_path / "none"
    caplog.set_level(logging.INFO, logger="exporter.sources.registry")
    options = _options(["--no-collector.nvml", "--no-collector.neuron", DEVICE_FLAG, str(absent)])
    daemon = Daemon(options, Config(), ManualClock(), RealHost(), REGISTRY)
    daemon._build_sources()
    assert daemon.sources == []
    assert f"fakeaccel collector off: {absent} not found (use --collector.fakeaccel to force it on)" in caplog.text
    # Forced on, it runs without its hardware, and its failure shows in its self-metrics.
    forced = _options(
        ["--no-collector.nvml", "--no-collector.neuron", "--collector.fakeaccel", DEVICE_FLAG, str(absent)]
    )
    text = await _scraped(Daemon(forced, Config(), ManualClock(), RealHost(), REGISTRY))
    assert 'accel_exporter_collector_success{collector="fakeaccel"} 0' in text
    assert 'accel_exporter_errors_total{collector="fakeaccel",reason="unreadable"} 2' in text
    # Turned off, it is not built even where its hardware is.
    absent.write_text("1", encoding="utf-8")
    off = _options(
        ["--no-collector.nvml", "--no-collector.neuron", "--no-collector.fakeaccel", DEVICE_FLAG, str(absent)]
    )
    daemon = Daemon(off, Config(), ManualClock(), RealHost(), REGISTRY)
    daemon._build_sources()
    assert daemon.sources == []


async def _stopped(sources: list[Source]) -> list[str]:
    """Stop sources built but never started (NVML's worker thread runs from construction); their names."""
    for source in sources:
        await source.stop()
    return [s.name for s in sources]


async def test_every_source_has_a_simulator_and_builds_under_its_own_name() -> None:
    scenario = parse_scenario(
        {
            "gpus": [{"index": 0, "model": "NVIDIA H100 80GB HBM3", "utilization": 0.5}],
            "neuron": {"device_type": "inferentia2", "devices": 1},
        },
        "both",
    )
    simulated = SimulatedHost(scenario)
    context = BuildContext(ManualClock(), Config(), forced=True)
    assert set(SIMULATORS) == {spec.name for spec in SOURCES}
    try:
        for spec in SOURCES:
            # The collector label of a source's self-metrics is its registry name, real or simulated.
            built = [host.build_source(spec, context) for host in (RealHost(), simulated)]
            assert await _stopped([s for s in built if s is not None]) == [spec.name, spec.name]
    finally:
        simulated.close()


async def test_a_simulated_host_builds_only_the_hardware_its_scenario_has(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exporter.sim.host")
    daemon = Daemon(Options(demo="inf2-inference", collectors={"nvml": True}), Config(), ManualClock())
    daemon._build_sources()
    assert await _stopped(daemon.sources) == ["neuron"]
    assert "nvml collector off: scenario 'inf2-inference' simulates no such hardware" in caplog.text
    assert daemon.environment.default_config_file is not None
    daemon.environment.close()
    # An entry without a simulator is off in the demo (its flag cannot conjure hardware).
    daemon = Daemon(Options(demo="p4d-idle-fleet"), Config(), ManualClock(), registry=REGISTRY)
    daemon._build_sources()
    assert await _stopped(daemon.sources) == ["nvml"]


def test_no_collector_flags_apply_to_a_simulated_host_too() -> None:
    daemon = Daemon(Options(demo="p4d-idle-fleet", collectors={"nvml": False}), Config(), ManualClock())
    daemon._build_sources()
    assert daemon.sources == []


def test_a_simulated_host_declares_its_identity_to_the_context() -> None:
    host = HostSettings(provider="aws", instance_type="p4d.24xlarge", region="us-east-1")
    simulated = SimulatedHost(Scenario("offline", "", host))
    assert not simulated.live and RealHost().live
    provider = ContextProvider(parse_config({"metadata": {"providers": []}}), ManualClock(), simulated)
    asyncio.run(provider.start())
    identity = provider.current().identity
    assert (identity.source, identity.instance_type, identity.region) == ("demo", "p4d.24xlarge", "us-east-1")
    assert provider.current().price.source == "builtin"  # offline: never the live price API


def test_restart_sections_come_from_the_registry() -> None:
    assert restart_sections(SOURCES) == ("neuron", "kubernetes")
    assert restart_sections((FAKE,)) == ("kubernetes",)


def test_host_environment_follows_demo() -> None:
    assert isinstance(host_environment(None), RealHost)
    simulated = host_environment("p4d-idle-fleet")
    assert isinstance(simulated, SimulatedHost) and simulated.given_identity.instance_type == "p4d.24xlarge"
