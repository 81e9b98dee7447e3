"""Run a blocking call (boto3) in a daemon thread and await it from the event loop.

Not the loop's default executor: `asyncio.run` and interpreter exit both wait for executor
threads, so one AWS call stuck in its retries would delay the exporter's shutdown by many
seconds. A daemon thread is simply abandoned; its late result is dropped if the loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_thread(name: str, func: Callable[[], T]) -> asyncio.Future[T]:
    """Start `func` in a new daemon thread; the returned future resolves on the current loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value: T | None = func()
            error: BaseException | None = None
        except BaseException as exc:  # handed to the awaiting side, never lost in the thread
            value, error = None, exc
        # RuntimeError: the loop has closed, nobody waits for this answer any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future
