"""A cap on the (team, workload) pairs one device keeps money counters for, and expiry of idle pairs.

The label cap bounds the values of `team` and of `workload` separately; their product still
reaches 100 × 100 series per device and metric when templates like `{user}` and `{command}` feed
them. Each device therefore keeps counters for at most `limit` pairs. An interval owned by a pair
beyond the cap is charged to the pair (`other`, `other`) and counted. A pair not charged for
`expiry` seconds is dropped: its dollars move into (`other`, `other`), so every sum over the
device stays exact and its slot is free for a new pair.
"""

from __future__ import annotations

from typing import TypeVar

from exporter.accounting.labelcap import OVERFLOW_VALUE

Pair = tuple[str, str]
OTHER_PAIR: Pair = (OVERFLOW_VALUE, OVERFLOW_VALUE)
K = TypeVar("K", bound=tuple[str, ...])


class PairCap:
    """The pairs one device keeps, with the time each was last charged."""

    def __init__(self) -> None:
        self._last_charged: dict[Pair, float] = {}

    def admit(self, pair: Pair, now: float, limit: int) -> Pair:
        """`pair` when it is kept or there is room for it, else OTHER_PAIR (the caller counts the overflow)."""
        if pair == OTHER_PAIR:
            return pair
        if pair in self._last_charged or len(self._last_charged) < limit:
            self._last_charged[pair] = now
            return pair
        return OTHER_PAIR

    def expire(self, now: float, expiry: float) -> set[Pair]:
        """Forget the pairs not charged for more than `expiry` seconds; returns them for folding."""
        gone = {pair for pair, last in self._last_charged.items() if now - last > expiry}
        for pair in gone:
            del self._last_charged[pair]
        return gone


def fold_into_other(pairs: set[Pair], book: dict[K, float]) -> None:
    """Move the counters of `pairs` into the (`other`, `other`) pair; keys are (team, workload, ...)."""
    for key in [k for k in book if k[:2] in pairs]:
        other: K = OTHER_PAIR + key[2:]  # type: ignore[assignment]  # the same shape, for the other pair
        book[other] = book.get(other, 0.0) + book.pop(key)
