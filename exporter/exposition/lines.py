"""Sample lines kept from render to render, and the two text formats assembled from them.

prometheus-client builds a family object and a sample tuple per series and escapes and formats
every label and number on every render (about 17 µs a series). Between two polls a series keeps
its name and labels and often its value, so this keeps, per series, its escaped `name{labels}`
prefix and its last formatted line: a render escapes only labels it has not seen and formats only
numbers that changed. The lines are the same in the text format 0.0.4 and in OpenMetrics 1.0.0
(labels sorted by name, values as prometheus-client's `floatToGoString` writes them); only the
HELP/TYPE headers and the closing `# EOF` differ, and those are built once per metric name.

prometheus-client stays the reference: tests render every built-in scenario both ways and compare
the parsed samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import cast

from prometheus_client import utils

from exporter.accounting.snapshot import ProcessSnapshot, Snapshot
from exporter.catalogue import spec
from exporter.exposition.collector import emit_series, encodable

# prometheus-client's number formatting (Go's shortest form), so both renderings agree digit for digit.
_format = cast(Callable[[float], str], utils.floatToGoString)
# (name, label values) -> (prefix "name{a="x"} ", value, whole line)
_Kept = dict[tuple[str, tuple[str, ...]], tuple[str, float, str]]
# device -> (its processes, their lines by metric name in the order the names first appeared)
_Blocks = dict[str, tuple[tuple[ProcessSnapshot, ...], tuple[tuple[str, list[str]], ...]]]


def _escape(value: str) -> str:
    return encodable(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@cache
def _label_order(name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Positions of the label values sorted by label name (the order both encoders write), and those names."""
    labels = spec(name).labels
    order = tuple(sorted(range(len(labels)), key=lambda i: labels[i]))
    return order, tuple(labels[i] for i in order)


def _prefix(name: str, values: tuple[str, ...]) -> str:
    if not values:
        return name + " "
    order, names = _label_order(name)
    pairs = ",".join(f'{label}="{_escape(values[i])}"' for i, label in zip(order, names, strict=True))
    return f"{name}{{{pairs}}} "


@cache
def family_of(name: str) -> tuple[str, str]:
    """(text HELP/TYPE lines, OpenMetrics HELP/TYPE lines) for the metric `name`; built once per name."""
    entry = spec(name)
    text_help = entry.help.replace("\\", "\\\\").replace("\n", "\\n")
    om_help = text_help.replace('"', '\\"')
    om_name = name.removesuffix("_total") if entry.type == "counter" else name
    text = f"# HELP {name} {text_help}\n# TYPE {name} {entry.type}\n"
    openmetrics = f"# HELP {om_name} {om_help}\n# TYPE {om_name} {entry.type}\n"
    return text, openmetrics


@dataclass(frozen=True)
class SampleLines:
    """One snapshot's sample lines, grouped by metric name in exposition order."""

    version: int
    families: tuple[tuple[str, tuple[str, ...]], ...]

    def body(self, *, openmetrics: bool) -> str:
        """The families with their headers, in one format (without process metrics or `# EOF`)."""
        parts: list[str] = []
        for name, lines in self.families:
            parts.append(family_of(name)[1 if openmetrics else 0])
            parts.extend(lines)
        return "".join(parts)


class LineKeeper:
    """Turns snapshots into SampleLines, reusing what the previous render escaped and formatted.

    It keeps only the series of the last snapshot it rendered (vanished series are dropped at
    once), so it does not grow over time. One thread at a time: the render thread.

    A device's process series are kept as a block too: while its processes are equal to the last
    render's (the ledger hands out the same snapshot objects for unchanged processes, so that is a
    glance), their lines are taken whole. On a Neuron host that is most of the body: 32 runtimes
    on each of 32 cores make 3,000 process series.
    """

    def __init__(self) -> None:
        self._kept: _Kept = {}
        self._blocks: _Blocks = {}

    def lines(self, snapshot: Snapshot) -> SampleLines:
        """The sample lines of `snapshot`."""
        previous = self._kept
        kept: _Kept = {}
        families: dict[str, list[str]] = {}
        previous_blocks = self._blocks
        blocks: _Blocks = {}
        capture: dict[str, list[str]] | None = None

        def add(name: str, values: tuple[str, ...], value: float) -> None:
            key = (name, values)
            old = previous.get(key)
            if old is None:
                prefix = _prefix(name, values)
                line = f"{prefix}{_format(value)}\n"
            elif old[1] == value:
                prefix, _, line = old
            else:
                prefix = old[0]
                line = f"{prefix}{_format(value)}\n"
            kept[key] = (prefix, value, line)
            out = families.get(name)
            if out is None:
                out = families[name] = []
            out.append(line)
            if capture is not None:
                captured = capture.get(name)
                if captured is None:
                    captured = capture[name] = []
                captured.append(line)

        def process_block(device: str, processes: tuple[ProcessSnapshot, ...], emit: Callable[[], None]) -> None:
            nonlocal capture
            block = previous_blocks.get(device)
            if block is not None and block[0] == processes:
                for name, lines in block[1]:  # in first-appearance order, as emit() would create them
                    out = families.get(name)
                    if out is None:
                        out = families[name] = []
                    out.extend(lines)
            else:
                capture = {}
                emit()
                block = (processes, tuple(capture.items()))
                capture = None
            blocks[device] = block

        emit_series(snapshot, add, process_block)
        self._kept = kept
        self._blocks = blocks
        return SampleLines(snapshot.version, tuple((name, tuple(lines)) for name, lines in families.items()))
