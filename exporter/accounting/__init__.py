"""Accounting: the only place where state grows over time (counters, states, money)."""
