"""Attribution rules indexed for matching, so the cost per process does not grow with literal rules.

Each rule is filed under one of its patterns:

- a literal pattern (no `*`, `?` or `[`): an exact-value dict per fact;
- a glob with a literal prefix (`train-*`): a dict per (fact, prefix length), keyed by the prefix;
- a glob that starts with a wildcard (`*serve.py*`): a list checked for every process.

Matching gathers the candidates (one dict lookup per fact and per distinct prefix length, plus the
unindexed globs), sorts them into rule order and checks each fully, so the first rule whose facts
all match still wins. Thousands of `{user: alice}` or `{namespace: ml-*}` rules cost a few
lookups; only rules that start with a wildcard are checked one by one, and those cost a substring
search each when they have the common shapes `*text*`, `*text` or `text*`: only other globs go
through a regular expression, compiled when first needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import translate

from exporter.config.model import AttributionRule

_WILDCARDS = frozenset("*?[")


def literal_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard (the whole pattern when it has none)."""
    for position, char in enumerate(pattern):
        if char in _WILDCARDS:
            return pattern[:position]
    return pattern


Check = Callable[[str], bool]


class _Glob:
    """A glob of no simpler shape, compiled to a regular expression the first time it is used."""

    def __init__(self, pattern: str) -> None:
        self._pattern = pattern
        self._match: Callable[[str], object] | None = None

    def __call__(self, value: str) -> bool:
        if self._match is None:
            self._match = re.compile(translate(self._pattern)).match
        return self._match(value) is not None


def _always(value: str) -> bool:
    return True


def pattern_check(pattern: str) -> Check:
    """A predicate equal to fnmatchcase(value, pattern), as cheap as the pattern's shape allows."""
    if _WILDCARDS.isdisjoint(pattern):
        return pattern.__eq__
    if pattern == "*":
        return _always
    head, body, tail = pattern[:1], pattern[1:-1], pattern[-1:]
    if head == "*" and tail == "*" and _WILDCARDS.isdisjoint(body):
        return lambda value: body in value
    if head == "*" and _WILDCARDS.isdisjoint(pattern[1:]):
        suffix = pattern[1:]
        return lambda value: value.endswith(suffix)
    if tail == "*" and _WILDCARDS.isdisjoint(pattern[:-1]):
        prefix = pattern[:-1]
        return lambda value: value.startswith(prefix)
    return _Glob(pattern)


class RuleIndex:
    """Rules in their configured order, filed for candidate lookup; immutable once built."""

    def __init__(self, rules: Sequence[AttributionRule]) -> None:
        self.rules = tuple(rules)
        self._checks = [tuple((key, pattern_check(pattern)) for key, pattern in rule.match) for rule in self.rules]
        self._exact: dict[str, dict[str, list[int]]] = {}
        self._prefix: dict[tuple[str, int], dict[str, list[int]]] = {}
        self._scan: list[int] = []
        for position, rule in enumerate(self.rules):
            self._file(position, rule)

    def _file(self, position: int, rule: AttributionRule) -> None:
        literal = next(((k, p) for k, p in rule.match if _WILDCARDS.isdisjoint(p)), None)
        if literal is not None:
            key, value = literal
            self._exact.setdefault(key, {}).setdefault(value, []).append(position)
            return
        # The longest literal prefix narrows the candidates most.
        best = max(((k, literal_prefix(p)) for k, p in rule.match), key=lambda kp: len(kp[1]), default=None)
        if best is None or not best[1]:
            self._scan.append(position)
            return
        key, prefix = best
        self._prefix.setdefault((key, len(prefix)), {}).setdefault(prefix, []).append(position)

    def candidates(self, facts: Mapping[str, str]) -> list[int]:
        """Positions of the rules that may match, in rule order."""
        found = list(self._scan)
        for key, table in self._exact.items():
            hit = table.get(facts.get(key, ""))
            if hit:
                found.extend(hit)
        for (key, length), table in self._prefix.items():
            value = facts.get(key, "")
            if len(value) >= length:
                hit = table.get(value[:length])
                if hit:
                    found.extend(hit)
        found.sort()
        return found

    def matching(self, facts: Mapping[str, str]) -> Iterator[AttributionRule]:
        """The rules whose facts all match, in rule order."""
        for position in self.candidates(facts):
            if all(check(facts.get(key, "")) for key, check in self._checks[position]):
                yield self.rules[position]
