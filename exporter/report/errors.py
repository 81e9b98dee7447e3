"""The two ways a report ends early: bad arguments (exit 2) and a failed run (exit 1)."""

from __future__ import annotations


class ReportUsageError(ValueError):
    """A bad flag value; the message names the flag and what it accepts."""


class ReportFailed(RuntimeError):
    """The run could not produce a report; the message says what went wrong and how to fix it."""
