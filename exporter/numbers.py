"""Number checks shared by the config reader and the Neuron line parser.

A leaf module (standard library only), so the Neuron parser child process can import the parser
without loading YAML and the config package.
"""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """`value` as a finite float; None for bools, non-numbers, NaN, infinities and integers beyond a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # YAML integers are unbounded: 10**400 is a valid document
        return None
    return number if math.isfinite(number) else None
