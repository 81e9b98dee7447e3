"""A small validating reader over parsed YAML that collects every error instead of stopping at one.

Each message names the key by its dotted path, what was expected and what was found, so a user
can fix the whole file in one pass (the pve-exporter `ConfigInvalid` idea).
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from typing import Any

import yaml

from exporter.context.price.price_bounds import BOUNDS_TEXT, price_problem
from exporter.numbers import finite_number

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class YamlProblem(Exception):
    """The text is not a YAML document this exporter can use; the message says where and why."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice: YAML says keys are unique, and
    PyYAML would otherwise keep the last one silently, so half of a section could vanish."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                raise YamlProblem(
                    f"duplicate key {key_node.value!r} at lines {first_line[key_node.value]} and {line}: "
                    "keep one of them"
                )
            first_line[key_node.value] = line
        return super().construct_mapping(node, deep=deep)


def yaml_document(text: str) -> Any:
    """`yaml.safe_load(text)`, with every way it can fail turned into one YamlProblem message.

    A key given twice in one mapping is refused, naming the key and both lines."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise YamlProblem(f"not valid YAML{where}: {getattr(exc, 'problem', None) or 'malformed YAML'}") from None
    except RecursionError:
        raise YamlProblem("not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise YamlProblem(f"not valid YAML: {exc}") from None


class ConfigInvalid(Exception):
    """The configuration has one or more errors; `errors` lists each as one line."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        if len(self.errors) == 1:
            return f"{where}{self.errors[0]}"
        return where + "invalid configuration:\n" + "\n".join(f"  - {e}" for e in self.errors)


# Bounded repr: a YAML alias bomb (a few lines aliasing lists of lists) must not be expanded
# into an error message of gigabytes.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 200
_REPR.maxlevel = 3


def _show(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer past Python's 4300-digit str() limit
        return "a number too long to show"
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: Any) -> float | None:
    """Parse `5s`, `1.5m`, `250ms`, `2h` or a bare number of seconds; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = finite_number(value)
        return number if number is not None and number >= 0 else None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return None


class Reader:
    """Reads typed values from one mapping of the document, recording errors under `path`."""

    def __init__(self, data: Any, path: str, errors: list[str]) -> None:
        self._path = path
        self._errors = errors
        self._seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error(None, "a mapping of keys to values", data)
            data = {}
        self._data: Mapping[Any, Any] = data

    def key_path(self, key: str | None) -> str:
        """The dotted path of `key` in the document."""
        if key is None:
            return self._path or "(top level)"
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str | None, expected: str, found: Any) -> None:
        """Record that `key` holds `found` where `expected` was required."""
        self._errors.append(f"config key '{self.key_path(key)}': expected {expected}, found {_show(found)}")

    def problem(self, key: str | None, message: str) -> None:
        """Record a free-form problem with `key`."""
        self._errors.append(f"config key '{self.key_path(key)}': {message}")

    @property
    def error_count(self) -> int:
        """Problems recorded so far in the whole document (to tell whether a value read cleanly)."""
        return len(self._errors)

    def has(self, key: str) -> bool:
        """Whether the key is present (and marks it as known)."""
        self._seen.add(key)
        return key in self._data

    def raw(self, key: str) -> Any:
        """The raw value, or None; marks the key as known."""
        self._seen.add(key)
        return self._data.get(key)

    def section(self, key: str) -> Reader:
        """A reader for a nested mapping."""
        return Reader(self.raw(key), self.key_path(key), self._errors)

    def number(self, key: str, default: float, *, minimum: float | None = None, maximum: float | None = None) -> float:
        """A finite number within bounds."""
        value = self.raw(key)
        if value is None:
            return default
        bounds = _bounds(minimum, maximum)
        number = finite_number(value)
        if number is None:
            self.error(key, f"a number{bounds}", value)
            return default
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            self.error(key, f"a number{bounds}", value)
            return default
        return number

    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        """A whole number within bounds."""
        value = self.raw(key)
        if value is None:
            return default
        bounds = _bounds(minimum, maximum)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"a whole number{bounds}", value)
            return default
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            self.error(key, f"a whole number{bounds}", value)
            return default
        return value

    def duration(self, key: str, default: float, *, minimum: float = 0.0, maximum: float | None = None) -> float:
        """A duration such as `5s` or `2m`, in seconds."""
        value = self.raw(key)
        if value is None:
            return default
        seconds = parse_duration(value)
        bounds = _bounds(minimum, maximum, unit="s")
        if seconds is None or seconds < minimum or (maximum is not None and seconds > maximum):
            self.error(key, f"a duration like '5s', '2m' or '1h'{bounds}", value)
            return default
        return seconds

    def string(self, key: str, default: str, *, choices: tuple[str, ...] | None = None, max_length: int = 4096) -> str:
        """A string, optionally one of `choices`."""
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool) and choices is None:
            value = str(value)
        if not isinstance(value, str):
            self.error(key, "a string", value)
            return default
        if choices is not None and value not in choices:
            self.error(key, "one of " + ", ".join(repr(c) for c in choices), value)
            return default
        if len(value) > max_length:
            self.error(key, f"a string of at most {max_length} characters", f"{len(value)} characters")
            return default
        return value

    def optional_string(self, key: str, *, choices: tuple[str, ...] | None = None) -> str | None:
        """A string or None when absent."""
        if self.raw(key) is None:
            return None
        return self.string(key, "", choices=choices)

    def boolean(self, key: str, default: bool) -> bool:
        """true or false."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, "true or false", value)
            return default
        return value

    def optional_boolean(self, key: str) -> bool | None:
        """true, false, or None when absent."""
        if self.raw(key) is None:
            return None
        return self.boolean(key, False)

    def string_map(self, key: str) -> dict[str, str]:
        """A mapping of strings to strings (numbers are accepted as values and stringified)."""
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, "a mapping of names to strings", value)
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str) or isinstance(item, (Mapping, list)) or item is None:
                self.error(f"{key}.{name}", "a string", item)
                continue
            out[name] = str(item).lower() if isinstance(item, bool) else str(item)
        return out

    def price_map(self, key: str) -> dict[str, float]:
        """A mapping of names to prices in USD per hour, each within the accepted range (price_bounds)."""
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, "a mapping of names to prices in USD per hour", value)
            return {}
        out: dict[str, float] = {}
        for name, item in value.items():
            price = finite_number(item)
            if not isinstance(name, str) or price is None or price_problem(price) is not None:
                self.error(f"{key}.{name}", f"a price {BOUNDS_TEXT}", item)
                continue
            out[name] = price
        return out

    def items(self, key: str) -> list[Reader]:
        """Readers for each mapping in a list."""
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, "a list", value)
            return []
        return [Reader(item, f"{self.key_path(key)}[{i}]", self._errors) for i, item in enumerate(value)]

    def string_list(
        self, key: str, default: tuple[str, ...], *, choices: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        """A list of strings."""
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "a list of strings", value)
            return default
        if choices is not None:
            bad = [v for v in value if v not in choices]
            if bad:
                self.error(key, "items from " + ", ".join(repr(c) for c in choices), bad)
                return default
        return tuple(value)

    def finish(self) -> None:
        """Record every key that no one asked for: a typo should not be silently ignored."""
        for key in self._data:
            if key not in self._seen:
                known = ", ".join(sorted(self._seen)) or "none"
                self._errors.append(f"config key '{self.key_path(str(key))}': unknown key (known keys here: {known})")


def _bounds(minimum: float | None, maximum: float | None, unit: str = "") -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum:g}{unit} to {maximum:g}{unit}"
    if minimum is not None:
        return f" of at least {minimum:g}{unit}"
    if maximum is not None:
        return f" of at most {maximum:g}{unit}"
    return ""
