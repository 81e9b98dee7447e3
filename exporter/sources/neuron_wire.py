"""How the Neuron parser child answers: one frame per line, cheap for the exporter to decode.

A frame is a 5-byte header (kind, payload length) and the payload: for a parsed line the pickled
MonitorRecord (about 40 KB for a 1.5 MB trn1n line, the cores' counters in columns: decoding it
takes about 0.4 ms, against 20-30 ms to parse the line), for a bad line the ParseError's message. Only the exporter's own child writes frames,
over a private pipe; the decoder still accepts nothing but the record types of neuron_parse and
builtins, so a confused child can only produce a WireError, never run code.
"""

from __future__ import annotations

import io
import pickle
import struct

from exporter.sources import neuron_parse
from exporter.sources.neuron_parse import MonitorRecord, ParseError, parse_line

HEADER = struct.Struct(">BI")
RECORD = ord("R")
PROBLEM = ord("E")
# A 1.5 MB line makes a ~40 KB record; anything near this is not a frame we wrote.
MAX_PAYLOAD_BYTES = 64 * 2**20

_RECORD_TYPES = frozenset(
    {
        "MonitorRecord",
        "RuntimeReport",
        "CoreCounters",
        "CoreUsage",
        "ExecutionStats",
        "MemoryUsed",
        "HwCounters",
        "DeviceEcc",
        "HardwareInfo",
        "InstanceInfo",
        "GroupError",
    }
)


class WireError(Exception):
    """The child's answer is not a frame this exporter writes (a bug, or a child of another version)."""


def frame(kind: int, payload: bytes) -> bytes:
    """One frame: header and payload."""
    return HEADER.pack(kind, len(payload)) + payload


def answer(line: bytes) -> bytes:
    """The child's frame for one line: the record, or the reason the line is unusable."""
    try:
        record = parse_line(line)
    except ParseError as exc:
        return frame(PROBLEM, str(exc).encode("utf-8", errors="replace"))
    except Exception as exc:  # a parser bug costs this line, not the child and every line after it
        return frame(PROBLEM, f"parser failed: {exc!r}"[:300].encode("utf-8", errors="replace"))
    return frame(RECORD, pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))


def payload_length(header: bytes) -> tuple[int, int]:
    """(kind, payload length) from a frame header; WireError when it is not one."""
    kind, length = HEADER.unpack(header)
    if kind not in (RECORD, PROBLEM) or length > MAX_PAYLOAD_BYTES:
        raise WireError(f"unexpected frame header {header!r}")
    return kind, length


def decode(kind: int, payload: bytes) -> MonitorRecord:
    """The record a frame carries; ParseError for a bad line, WireError for a frame that makes no sense."""
    if kind == PROBLEM:
        raise ParseError(payload.decode("utf-8", errors="replace"))
    try:
        record = _RecordUnpickler(io.BytesIO(payload)).load()
    except WireError:
        raise
    except Exception as exc:  # truncated or corrupt pickle: whatever pickle raises
        raise WireError(f"undecodable record: {exc!r}"[:300]) from None
    if not isinstance(record, MonitorRecord):
        raise WireError(f"expected a MonitorRecord, found {type(record).__name__}")
    return record


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if module == neuron_parse.__name__ and name in _RECORD_TYPES:
            found: type = getattr(neuron_parse, name)
            return found
        raise WireError(f"the record names {module}.{name}, which is not a record type")
