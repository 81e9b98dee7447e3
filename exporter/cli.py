"""Command line: Prometheus-style flags, each with an ACCEL_* environment fallback."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from exporter import __version__
from exporter.cli_values import (
    BOOLEANS,
    LOG_FORMATS,
    absolute_path,
    interval,
    listen_address,
    listen_addresses,
    state_directory,
    telemetry_path,
)
from exporter.config import ConfigInvalid, load_config
from exporter.daemon import DEFAULT_PORT, Daemon, Options
from exporter.environment import ENVIRONMENT, environment_problems, unknown_variables
from exporter.logs import LEVELS, setup_logging
from exporter.web.webconfig import WebConfigInvalid, load_web_config

# Team rules for the built-in scenarios, used by --demo when no --config.file is given and the
# scenario names no demo_config of its own.
DEMO_CONFIG = Path(__file__).resolve().parent / "sim" / "demo-config.yaml"
log = logging.getLogger("exporter")
T = TypeVar("T")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("ACCEL_" + name, default)


def _env_bool(name: str) -> bool | None:
    # None (auto) for a bad value: main() refuses it anyway, before anything is built.
    value = _env(name)
    return None if value is None else BOOLEANS.get(value.strip().lower())


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit status 2, no usage dump: the message names the flag.
        self.exit(2, f"accel-cost-exporter: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag documents its environment variable."""
    p = _Parser(
        prog="accel-cost-exporter",
        description="Live accelerator cost, idle spend and waste for Prometheus.",
        epilog="Fleet waste audit and rightsizing report: accel-cost-exporter report --help",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        action="append",
        metavar="[HOST]:PORT",
        help=f"address to listen on, repeatable (default :{DEFAULT_PORT}; env ACCEL_WEB_LISTEN_ADDRESS, comma-separated)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=_env("WEB_TELEMETRY_PATH", "/metrics"),
        help="path of the metrics endpoint (env ACCEL_WEB_TELEMETRY_PATH)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        default=_env("WEB_CONFIG_FILE"),
        help="exporter-toolkit web config: TLS and basic auth (env ACCEL_WEB_CONFIG_FILE)",
    )
    p.add_argument(
        "--config.file",
        dest="config",
        default=_env("CONFIG_FILE"),
        help="YAML configuration: prices, team rules, collectors (env ACCEL_CONFIG_FILE)",
    )
    p.add_argument(
        "--collector.interval",
        dest="interval",
        default=_env("COLLECTOR_INTERVAL", "5s"),
        help="poll interval, e.g. 1s, 5s, 30s (default 5s; env ACCEL_COLLECTOR_INTERVAL)",
    )
    p.add_argument(
        "--collector.nvml",
        dest="nvml",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("COLLECTOR_NVML"),
        help="NVIDIA GPUs through NVML (default on; env ACCEL_COLLECTOR_NVML)",
    )
    p.add_argument(
        "--collector.neuron",
        dest="neuron",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("COLLECTOR_NEURON"),
        help="AWS NeuronCores through neuron-monitor (default: on when the binary exists; env ACCEL_COLLECTOR_NEURON)",
    )
    p.add_argument(
        "--neuron.monitor-path",
        dest="neuron_path",
        default=_env("NEURON_MONITOR_PATH"),
        help="absolute path of neuron-monitor (default /opt/aws/neuron/bin/neuron-monitor; env ACCEL_NEURON_MONITOR_PATH)",
    )
    p.add_argument(
        "--state.directory",
        dest="state_dir",
        default=_env("STATE_DIRECTORY", os.environ.get("STATE_DIRECTORY")),
        help="where the price cache and the idle clock live (default $STATE_DIRECTORY from systemd; env ACCEL_STATE_DIRECTORY)",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        default=_env("LOG_LEVEL", "info"),
        choices=sorted(LEVELS),
        help="(env ACCEL_LOG_LEVEL)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default=_env("LOG_FORMAT", "logfmt"),
        choices=LOG_FORMATS,
        help="(env ACCEL_LOG_FORMAT)",
    )
    p.add_argument(
        "--demo",
        nargs="?",
        const="p4d-idle-fleet",
        default=_env("DEMO"),
        metavar="SCENARIO",
        help="run on simulated hardware: a built-in scenario name (default p4d-idle-fleet), a scenario file, or 'list' "
        "(env ACCEL_DEMO)",
    )
    p.add_argument("--check-config", action="store_true", help="validate the configuration (and web config) and exit")
    p.add_argument("--version", action="version", version=f"accel-cost-exporter {__version__}")
    return p


def _checked(flag: str, check: Callable[[str], T], value: str) -> T:
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def options_from_args(args: argparse.Namespace) -> Options:
    """Validate flag values; raises ValueError with the flag's name."""
    seconds = _checked("--collector.interval", interval, args.interval)
    if args.listen:
        listen = [_checked("--web.listen-address", listen_address, a) for a in args.listen]
    else:
        listen = _checked(
            "ACCEL_WEB_LISTEN_ADDRESS", listen_addresses, _env("WEB_LISTEN_ADDRESS") or f":{DEFAULT_PORT}"
        )
    _checked("--web.telemetry-path", telemetry_path, args.telemetry_path)
    if args.neuron_path:
        _checked("--neuron.monitor-path", absolute_path, args.neuron_path)
    if args.state_dir:
        _checked("--state.directory", state_directory, args.state_dir)
    return Options(
        listen_addresses=tuple(listen),
        telemetry_path=args.telemetry_path,
        web_config_file=args.web_config,
        config_file=args.config,
        interval=seconds,
        log_level=args.log_level,
        log_format=args.log_format,
        demo=args.demo,
        collector_nvml=args.nvml,
        collector_neuron=args.neuron,
        neuron_monitor_path=args.neuron_path,
        state_directory=args.state_dir,
    )


def _check_web_config(path: str | None) -> None:
    if path:
        load_web_config(path)


def _scenario_line(name: str, description: str) -> str:
    """One `--demo list` entry: the name, then the whole description wrapped at word boundaries."""
    indent = " " * 19
    text = " ".join(description.split())
    return textwrap.fill(text, width=100, initial_indent=f"{name:18} ", subsequent_indent=indent)


def _check_price_cache(options: Options) -> None:
    """Load the price cache as a start would, so its warnings (it is then ignored) show here too."""
    if options.state_directory and not options.demo:
        from exporter.context.price.price_cache import PriceCache

        PriceCache(options.state_directory)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `accel-cost-exporter` and `python -m exporter`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        # The report subcommand has its own parser; the exporter stays flag-only.
        from exporter.report.main import run

        return run(argv[1:])
    args = build_parser().parse_args(argv)
    problems = environment_problems(os.environ)
    if problems:
        # Refused like a bad flag: exit status 2, one line per variable, nothing started.
        for problem in problems:
            print(f"accel-cost-exporter: error: {problem} (environment variable; fix or unset it)", file=sys.stderr)
        return 2
    if args.demo == "list":
        from exporter.sim.scenario import builtin_scenarios, load_scenario

        for name in builtin_scenarios():
            print(_scenario_line(name, load_scenario(name).description))
        return 0
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"accel-cost-exporter: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(options.log_level, options.log_format)
    for name in unknown_variables(os.environ):
        log.warning("ignoring the environment variable %s: no flag reads it (known: %s)", name, ", ".join(ENVIRONMENT))
    try:
        if options.demo:
            from exporter.sim.scenario import load_scenario

            scenario = load_scenario(options.demo)
            if not options.config_file:
                # A scenario may bring its own configuration (owned prices, Slurm rules).
                options = replace(options, config_file=scenario.demo_config or str(DEMO_CONFIG))
        config = load_config(options.config_file)
        _check_web_config(options.web_config_file)
    except (ConfigInvalid, WebConfigInvalid) as exc:
        print(f"accel-cost-exporter: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        _check_price_cache(options)
        print(f"configuration OK ({options.config_file or 'defaults'})")
        return 0
    # Renders and NVML polls run on worker threads; a shorter GIL switch interval than the 5 ms
    # default lets the event loop answer scrapes while they work.
    sys.setswitchinterval(0.001)
    # What is loaded by now (modules, config) lives as long as the process: keep it out of the
    # cyclic collector's view, so a full collection scans only what the daemon creates.
    gc.freeze()
    try:
        status = asyncio.run(Daemon(options, config).run())
    except KeyboardInterrupt:
        status = 0
    return status
