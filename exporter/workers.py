"""A one-thread executor whose thread does not hold up interpreter exit.

NVML calls must run off the event loop, one at a time. A driver call can also wedge forever;
with a ThreadPoolExecutor the interpreter would then wait for that thread at exit and SIGTERM
would never finish. A daemon thread is simply abandoned.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")
_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class SerialDaemonExecutor(Executor):
    """Runs submitted calls in order on one daemon thread named `name`."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `fn(*args, **kwargs)`; the future settles when the thread has run it."""
        if self._closed:
            raise RuntimeError("cannot submit to a shut-down executor")
        future: Future[T] = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the waiting side
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop after the queued calls; `wait` joins the thread unless called from it."""
        self._closed = True
        self._queue.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
