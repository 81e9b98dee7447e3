"""A cap on the number of distinct values a label may take, so bad tags cannot explode cardinality."""

from __future__ import annotations

OVERFLOW_VALUE = "other"


class LabelCap:
    """Admits the first `limit` distinct values of each label; later ones become `other` and are counted."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, set[str]] = {}
        self.overflow: dict[str, int] = {}

    def admit(self, label: str, value: str) -> str:
        """`value`, or `other` once the label already has `limit` distinct values."""
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) < self._limit:
            seen.add(value)
            return value
        self.count_overflow(label)
        return OVERFLOW_VALUE

    def count_overflow(self, label: str) -> None:
        """Count one value (or, for `pair`, one interval) replaced by `other`."""
        self.overflow[label] = self.overflow.get(label, 0) + 1
