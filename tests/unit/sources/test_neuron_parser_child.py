"""The Neuron parser child: its frames (pure functions) and its supervision (real child processes).

The child is the real `python -m exporter.sources.neuron_parser_child`; the broken children
(hung, crashing, answering garbage, missing) are small real programs in its place.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import TESTS, process_gone

from exporter.sources.neuron_parse import ParseError, parse_line
from exporter.sources.neuron_parser import ParserChild, ParserCrashed, ParserUnavailable
from exporter.sources.neuron_wire import HEADER, PROBLEM, RECORD, WireError, answer, decode, frame, payload_length

FIXTURES = TESTS / "fixtures" / "neuron-monitor"
GOOD_LINES = [path.read_bytes().strip() for path in sorted(FIXTURES.glob("*.json"))]
BAD_LINES = [b'{"neuron_runtime_data": [', b"\xff\xfe not utf-8", b"[1, 2, 3]", b"[" * 100_000 + b"]" * 100_000]


def unframe(data: bytes) -> tuple[int, bytes]:
    kind, length = payload_length(data[: HEADER.size])
    payload = data[HEADER.size :]
    assert len(payload) == length
    return kind, payload


def parse_error(line: bytes) -> str:
    with pytest.raises(ParseError) as caught:
        parse_line(line)
    return str(caught.value)


# --- frames: pure ------------------------------------------------------------------------------


@pytest.mark.parametrize("line", GOOD_LINES, ids=[p.name for p in sorted(FIXTURES.glob("*.json"))])
def test_a_frame_carries_the_same_record_as_parsing_in_process(line: bytes) -> None:
    kind, payload = unframe(answer(line))
    assert kind == RECORD
    record = decode(kind, payload)
    assert record == parse_line(line)
    assert record.runtimes or record.hardware is not None  # the fixtures are not empty documents


@pytest.mark.parametrize("line", BAD_LINES, ids=["truncated", "not-utf8", "array", "too-deep"])
def test_a_bad_line_gives_the_same_error_as_in_process(line: bytes) -> None:
    kind, payload = unframe(answer(line))
    assert kind == PROBLEM
    with pytest.raises(ParseError) as caught:
        decode(kind, payload)
    assert str(caught.value) == parse_error(line)


def test_the_decoder_accepts_no_other_types() -> None:
    # A pickle that would call os.system on load: refused before anything runs.
    evil = pickle.dumps(os.system)
    with pytest.raises(WireError, match=r"(posix|os)\.system"):
        decode(RECORD, evil)
    with pytest.raises(WireError, match="expected a MonitorRecord"):
        decode(RECORD, pickle.dumps({"runtimes": []}))
    good = answer(GOOD_LINES[0])
    with pytest.raises(WireError, match="undecodable"):
        decode(RECORD, good[HEADER.size : HEADER.size + 40])  # truncated
    with pytest.raises(WireError, match="unexpected frame header"):
        payload_length(frame(ord("X"), b"")[: HEADER.size])


# --- the real child ------------------------------------------------------------------------------


async def eventually(attempt: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Retry `attempt` until it returns True (no fixed wait: it retries as soon as it can)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await attempt():
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout:g}s: {what}"
        await asyncio.sleep(0.02)


async def stop_and_check_reaped(parser: ParserChild) -> None:
    await asyncio.wait_for(parser.stop(), 10)
    assert parser.pids
    for pid in parser.pids:
        assert process_gone(pid), f"parser child {pid} survived stop() or was left a zombie"


async def test_the_child_parses_like_the_exporter_and_stays_up() -> None:
    parser = ParserChild()
    try:
        for line in GOOD_LINES * 2:
            assert await parser.parse(line) == parse_line(line)
        for line in BAD_LINES:
            with pytest.raises(ParseError) as caught:
                await parser.parse(line)
            # The child reads lines, so it sees the newline the source's own lines end with too.
            assert str(caught.value) == parse_error(line + b"\n")
        assert await parser.parse(GOOD_LINES[0]) == parse_line(GOOD_LINES[0])  # a bad line left it usable
        assert len(parser.pids) == 1 and parser.pid == parser.pids[0] != os.getpid()
    finally:
        await stop_and_check_reaped(parser)


async def test_a_killed_child_is_restarted_after_its_backoff() -> None:
    parser = ParserChild(backoff_initial_seconds=0.3)
    line = GOOD_LINES[0]
    try:
        await parser.parse(line)
        first = parser.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ParserCrashed, match=f"pid {first}") as caught:
            await parser.parse(line)
        assert "restarts in" in str(caught.value)
        # Backing off: no child, the caller parses in process.
        with pytest.raises(ParserUnavailable):
            await parser.parse(line)

        async def parsed_by_a_new_child() -> bool:
            try:
                return await parser.parse(line) == parse_line(line)
            except ParserUnavailable:
                return False

        await eventually(parsed_by_a_new_child, "a new child after the backoff")
        assert len(parser.pids) == 2 and parser.pid == parser.pids[1] != first
    finally:
        await stop_and_check_reaped(parser)


def python_child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_hung_child_is_killed_and_its_line_lost() -> None:
    parser = ParserChild(
        argv=python_child("import sys, time\nsys.stdin.buffer.readline()\ntime.sleep(600)"),
        answer_timeout_seconds=0.5,
    )
    try:
        with pytest.raises(ParserCrashed, match=r"gave no answer within 0\.5s") as caught:
            await parser.parse(GOOD_LINES[0])
        assert caught.value.line_lost
        assert parser.pid is None
    finally:
        await stop_and_check_reaped(parser)


async def test_a_child_answering_garbage_is_replaced() -> None:
    parser = ParserChild(
        argv=python_child("import sys\nsys.stdin.buffer.readline()\nsys.stdout.buffer.write(b'HTTP/1.1 200 OK')"),
        backoff_initial_seconds=0.05,
    )
    try:
        with pytest.raises(ParserCrashed, match="answered nonsense") as caught:
            await parser.parse(GOOD_LINES[0])
        assert caught.value.line_lost
    finally:
        await stop_and_check_reaped(parser)


async def test_a_child_that_cannot_import_says_why() -> None:
    parser = ParserChild(argv=[sys.executable, "-m", "exporter.no_such_parser"], backoff_initial_seconds=0.05)
    try:
        with pytest.raises(ParserCrashed) as caught:
            await parser.parse(GOOD_LINES[0])
        # Its stderr is read, not passed through: the message carries the last line when it arrived in time.
        assert "died" in str(caught.value) or "exited" in str(caught.value)
    finally:
        await stop_and_check_reaped(parser)


async def test_a_missing_interpreter_is_counted_and_backed_off(tmp_path: Path) -> None:
    parser = ParserChild(argv=[str(tmp_path / "no-python")], backoff_initial_seconds=30.0)
    with pytest.raises(ParserUnavailable, match="cannot start"):
        await parser.parse(GOOD_LINES[0])
    with pytest.raises(ParserUnavailable, match="restarting"):  # not retried before the backoff
        await parser.parse(GOOD_LINES[0])
    assert parser.take_spawn_failures() == 1 and parser.take_spawn_failures() == 0
    assert parser.pids == ()
    await parser.stop()


async def test_cancelling_a_parse_never_reuses_that_child() -> None:
    parser = ParserChild(argv=python_child("import sys, time\nsys.stdin.buffer.readline()\ntime.sleep(600)"))
    try:
        task = asyncio.create_task(parser.parse(GOOD_LINES[0]))
        await eventually(lambda: _true_if(parser.pid is not None), "the child started")
        first = parser.pid
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert parser.pid is None and first is not None
    finally:
        await stop_and_check_reaped(parser)


async def _true_if(condition: bool) -> bool:
    return condition
