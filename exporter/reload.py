"""The slow half of a configuration reload, for a worker thread: parse the file, compile its rules.

A file of 40,000 attribution rules takes seconds of pure-Python YAML parsing. On a worker thread
the event loop still gets the interpreter every few milliseconds, except while the cyclic garbage
collector runs: the parse allocates a large, growing tree, and each full collection over it held
the interpreter for 100-200 ms at a time. The collector is paused for the parse (the tree is
freed by reference counting when it is done) and resumed afterwards. The interpreter's switch
interval is also shortened meanwhile, so the loop waits about 1 ms rather than 5 ms each time it
needs the interpreter back from the parser.
"""

from __future__ import annotations

import gc
import sys
import threading

from exporter.config import Config, load_config
from exporter.context.attribution import compile_rules

_gc_lock = threading.Lock()
SWITCH_INTERVAL_SECONDS = 0.001


def prepare_config(path: str | None) -> Config:
    """Load and validate the file at `path` and compile its rules; raises ConfigInvalid like load_config."""
    with _gc_lock:
        was_enabled = gc.isenabled()
        interval = sys.getswitchinterval()
        gc.disable()
        sys.setswitchinterval(min(interval, SWITCH_INTERVAL_SECONDS))
        try:
            config = load_config(path)
            compile_rules(config.attribution)  # the provider built on the event loop finds it ready
        finally:
            sys.setswitchinterval(interval)
            if was_enabled:
                gc.enable()
    return config
