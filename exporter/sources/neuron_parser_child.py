"""The Neuron parser child: neuron-monitor lines on stdin, one answer frame per line on stdout.

Run as `python -m exporter.sources.neuron_parser_child` by the Neuron source. `json.loads` of a
1.5 MB line holds the GIL for 15-20 ms; in this process it no longer holds up the exporter's
event loop. It exits when its stdin closes (the exporter stopped or died).
"""

from __future__ import annotations

import os
import sys

from exporter.sources.neuron_wire import answer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    """Answer every line until stdin closes; 0 then, 0 also when the exporter went away."""
    try:
        for line in sys.stdin.buffer:
            # Unbuffered writes: the exporter waits for each answer, and nothing is left to flush at exit.
            _write_all(1, answer(line))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
