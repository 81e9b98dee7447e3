"""Checks of command-line values, shared by each flag and its ACCEL_* environment variable.

Each takes the text as given and returns the value, or raises ValueError("expected ..., found ...");
the caller prefixes the flag's or the variable's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from exporter.config import ConfigInvalid, parse_duration
from exporter.daemon import DEFAULT_PORT

LOG_FORMATS = ("logfmt", "json")
BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def interval(text: str) -> float:
    """The poll interval in seconds: a duration from 100 ms to 1 h, with its unit."""
    # Like Prometheus' own flags, a duration needs its unit: a bare "5" could mean seconds or
    # milliseconds to the reader. (Bare numbers of seconds stay valid inside the YAML file.)
    if text.strip().replace(".", "", 1).isdigit():
        raise ValueError(f"give a unit, e.g. '{text.strip()}s'; found {text!r}")
    seconds = parse_duration(text)
    if seconds is None or not 0.1 <= seconds <= 3600:
        raise ValueError(f"expected a duration from 100ms to 1h like '5s', found {text!r}")
    return seconds


def listen_address(text: str) -> str:
    """One [host]:port address."""
    from exporter.web.server import parse_listen_address

    parse_listen_address(text)  # its ValueError says what is wrong
    return text


def listen_addresses(text: str) -> list[str]:
    """Comma-separated [host]:port addresses, at least one."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise ValueError(f"expected [host]:port addresses separated by commas, like ':{DEFAULT_PORT}', found {text!r}")
    return [listen_address(a) for a in addresses]


def telemetry_path(text: str) -> str:
    """The metrics path: starts with '/', and is not one of the probes."""
    if not text.startswith("/") or text in ("/-/healthy", "/-/ready"):
        raise ValueError(f"expected a path starting with '/' other than the probes, found {text!r}")
    return text


def existing_file(text: str) -> str:
    """The path of a file that exists; what is in it is checked by its loader."""
    if not os.path.isfile(text):
        raise ValueError(f"expected the path of an existing file, found {text!r}")
    return text


def state_directory(text: str) -> str:
    """A directory, or a path where one can be created (not an existing file)."""
    if not text or (os.path.exists(text) and not os.path.isdir(text)):
        raise ValueError(f"expected a directory (created when missing), found {text!r}")
    return text


def one_of(*choices: str) -> Callable[[str], str]:
    """A check that accepts exactly one of `choices`."""

    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, found {text!r}")
        return text

    return check


def scenario(text: str) -> str:
    """'list', a scenario file or a built-in scenario name (--demo)."""
    if text != "list":
        from exporter.sim.scenario import load_scenario

        try:
            load_scenario(text)
        except ConfigInvalid as exc:
            raise ValueError(str(exc)) from None  # names the scenario and lists the built-in ones
    return text


def parse_boolean(text: str) -> bool:
    """true/false, 1/0, yes/no or on/off (any case); ValueError naming the accepted words otherwise."""
    value = BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"expected one of {', '.join(BOOLEANS)}, found {text!r}")
    return value
