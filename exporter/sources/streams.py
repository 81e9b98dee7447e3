"""Text lines from a child's pipe, for the children the sources supervise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def text_lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """Each non-blank line of `stream`, decoded leniently and stripped, until EOF.

    A line over the stream's limit is skipped, not fatal: this is for draining stderr, which must
    go on or the child blocks on a full pipe.
    """
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            continue
        if not line:
            return
        text = line.decode("utf-8", errors="replace").strip()
        if text:
            yield text
