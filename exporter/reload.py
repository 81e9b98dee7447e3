"""The slow half of a configuration reload, kept off the event loop: parse the file, compile its rules.

A file of 40,000 attribution rules takes 5-20 s of pure-Python YAML parsing. In a thread of the
exporter that still stalls the event loop: the parser holds the interpreter lock between
switches, its garbage collections over the growing tree held it for 100-200 ms, and on a busy
host a thread preempted while holding the lock stalls the loop for as long as the scheduler
keeps it off the CPU (0.1-0.5 s seen on a loaded 2-core machine). So the file is parsed and
validated in a child interpreter (`python -m exporter.reload FILE`), which writes the
configuration back as pickles: the rules in chunks of CHUNK_RULES, so that loading them back (on
a worker thread) never holds the lock for long. Only the rule index is built here, on a worker
thread. When the child cannot run, the file is parsed on a worker thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import pickle
import sys
import threading
from dataclasses import replace
from typing import BinaryIO

from exporter.config import Config, ConfigInvalid, load_config
from exporter.config.model import AttributionRule
from exporter.context.owner.attribution import compile_rules

log = logging.getLogger(__name__)

CHUNK_RULES = 500
NICE_INCREMENT = 5
PARSE_TIMEOUT_SECONDS = 300.0  # 40,000 rules took 5-20 s on a busy 2-core host
_gc_lock = threading.Lock()


async def prepare_config(path: str | None) -> Config:
    """Load and validate the file at `path` and compile its rules; raises ConfigInvalid like load_config."""
    config = await _parse_in_child(path) if path is not None else None
    if config is None:
        config = await asyncio.to_thread(_parse_here, path)
    await asyncio.to_thread(compile_rules, config.attribution)  # the provider built on the loop finds it ready
    return config


async def _parse_in_child(path: str) -> Config | None:
    """The configuration parsed by a child interpreter; None when the child could not do it."""
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter.reload",
            path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("configuration reload: cannot start a parser process (%s); parsing in a thread", exc)
        return None
    try:
        output, errors = await asyncio.wait_for(child.communicate(), PARSE_TIMEOUT_SECONDS)
    except asyncio.TimeoutError:
        raise ConfigInvalid(
            [f"parsing took longer than {PARSE_TIMEOUT_SECONDS:.0f} s; split or shorten the file"], path
        ) from None
    finally:
        if child.returncode is None:  # cancelled (shutdown during a reload): do not leave it behind
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    if child.returncode != 0 or not output:
        text = errors.decode(errors="replace").strip().splitlines()
        log.warning(
            "configuration reload: the parser process failed (exit %s%s); parsing in a thread",
            child.returncode,
            f": {text[-1]}" if text else "",
        )
        return None
    return await asyncio.to_thread(_unpickle, output)


def _unpickle(output: bytes) -> Config:
    """The child's answer: ConfigInvalid raised again, or the configuration with its rules put back."""
    stream = io.BytesIO(output)
    kind, payload = pickle.load(stream)
    if kind == "invalid":
        errors, source = payload
        raise ConfigInvalid(errors, source)
    config, chunks = payload
    rules: list[AttributionRule] = []
    for _ in range(chunks):
        rules.extend(pickle.load(stream))  # one short call per chunk: the loop gets its turns between them
    assert isinstance(config, Config)
    return replace(config, attribution=replace(config.attribution, rules=tuple(rules)))


def _parse_here(path: str | None) -> Config:
    """Parse in this process (on a worker thread), with the cyclic garbage collector paused meanwhile."""
    with _gc_lock:
        was_enabled = gc.isenabled()
        gc.disable()  # its full passes over the growing parse tree held the lock 100-200 ms each
        try:
            return load_config(path)
        finally:
            if was_enabled:
                gc.enable()


def write_parsed(path: str, out: BinaryIO) -> None:
    """The child's side: parse `path`, write ("invalid", (errors, source)) or the config and its rule chunks."""
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        pickle.dump(("invalid", (exc.errors, exc.source)), out)
        return
    rules = config.attribution.rules
    chunks = [rules[i : i + CHUNK_RULES] for i in range(0, len(rules), CHUNK_RULES)]
    shell = replace(config, attribution=replace(config.attribution, rules=()))
    pickle.dump(("ok", (shell, len(chunks))), out)
    for chunk in chunks:
        pickle.dump(chunk, out)


def main(argv: list[str]) -> int:
    """`python -m exporter.reload FILE`: used by the daemon only."""
    if len(argv) != 1:
        print("usage: python -m exporter.reload FILE", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(NICE_INCREMENT)  # background work: the exporter's own loop comes first on a busy host
    write_parsed(argv[0], sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
