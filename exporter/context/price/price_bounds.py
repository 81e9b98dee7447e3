"""The range every price must fall in, whatever its source: config, AWS, the state cache, the table.

A price outside it is a typo, a unit mistake or a broken answer, never a real rate, and it would
poison the cost counters for good (an infinite price makes them +Inf forever). The range is wide
on purpose: the cheapest spot instances cost a few tenths of a cent an hour, the largest AWS
instance about $400 an hour; docs/pricing.md documents it.
"""

from __future__ import annotations

import math

MIN_DOLLARS_PER_HOUR = 0.0001
MAX_DOLLARS_PER_HOUR = 1000.0
BOUNDS_TEXT = f"from {MIN_DOLLARS_PER_HOUR:g} to {MAX_DOLLARS_PER_HOUR:g} USD per hour"


def price_problem(dollars_per_hour: float) -> str | None:
    """None for a usable price; otherwise why it is refused, for a log line or error message."""
    if not math.isfinite(dollars_per_hour):
        return f"{dollars_per_hour!r} is not a finite number"
    if not MIN_DOLLARS_PER_HOUR <= dollars_per_hour <= MAX_DOLLARS_PER_HOUR:
        return f"{dollars_per_hour:g} is outside the accepted prices ({BOUNDS_TEXT})"
    return None
