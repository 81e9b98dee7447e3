"""ACCEL_* environment variables: checked like the flags they stand in for.

Each flag has an `ACCEL_*` fallback. A value the flag would refuse is refused the same way, naming
the variable; an empty value is refused too (unset the variable instead). Without this check,
`ACCEL_COLLECTOR_NVML=enabled` silently turned NVML off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from exporter.cli_values import (
    LOG_FORMATS,
    existing_file,
    interval,
    listen_addresses,
    one_of,
    parse_boolean,
    scenario,
    state_directory,
    telemetry_path,
)
from exporter.logs import LEVELS
from exporter.sources.registry import SOURCES, SourceSpec

PREFIX = "ACCEL_"
# The simulator's own variables (exporter/sim): not the exporter's to judge.
FOREIGN_PREFIXES = ("ACCEL_SIM_",)

# The ACCEL_* variables of the flags that are not a source's, with the check its value must pass.
_GENERAL: dict[str, Callable[[str], object]] = {
    "ACCEL_WEB_LISTEN_ADDRESS": listen_addresses,
    "ACCEL_WEB_TELEMETRY_PATH": telemetry_path,
    "ACCEL_WEB_CONFIG_FILE": existing_file,
    "ACCEL_CONFIG_FILE": existing_file,
    "ACCEL_COLLECTOR_INTERVAL": interval,
    "ACCEL_STATE_DIRECTORY": state_directory,
    "ACCEL_LOG_LEVEL": one_of(*sorted(LEVELS)),
    "ACCEL_LOG_FORMAT": one_of(*LOG_FORMATS),
    "ACCEL_DEMO": scenario,
}


def variables(registry: tuple[SourceSpec, ...] = SOURCES) -> dict[str, Callable[[str], object]]:
    """Every ACCEL_* variable the flags read, with its check: the general ones and each source's."""
    checks = dict(_GENERAL)
    for spec in registry:
        checks[spec.variable] = parse_boolean
        checks.update({extra.variable: extra.check for extra in spec.flags})
    return checks


# Every ACCEL_* variable of the built-in flags (a test keeps this in step with --help).
ENVIRONMENT = variables()


def environment_problems(environ: Mapping[str, str], registry: tuple[SourceSpec, ...] = SOURCES) -> list[str]:
    """One message per set variable whose value its check refuses, naming the variable."""
    problems = []
    for name, check in variables(registry).items():
        value = environ.get(name)
        if value is None:
            continue
        try:
            check(value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def unknown_variables(environ: Mapping[str, str], registry: tuple[SourceSpec, ...] = SOURCES) -> list[str]:
    """ACCEL_* names that no flag reads (a typo, or a variable of another version)."""
    known = variables(registry)
    return sorted(
        name
        for name in environ
        if name.startswith(PREFIX) and name not in known and not name.startswith(FOREIGN_PREFIXES)
    )
