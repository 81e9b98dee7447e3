"""Label value hygiene: values from tags and processes are untrusted and unbounded.

Instance tags, user names, command lines and pod names end up as Prometheus label values. A tag
can hold 256 characters of anything, a command line kilobytes; a newline or a stray control
character makes dashboards unreadable. `sanitize_label` bounds the length and the character set;
the cap on the number of distinct values is enforced in accounting.
"""

from __future__ import annotations

import unicodedata

DEFAULT_MAX_LENGTH = 64
ELLIPSIS = "…"
# Work on a bounded prefix so a 10 MB value costs no more than a 4 kB one.
_SCAN_FACTOR = 4


def sanitize_label(value: str, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """Drop control characters, fold whitespace and cut to `max_length` characters.

    Quotes, backslashes and printable unicode are kept: the exposition escapes them. Control,
    format and unassigned characters (newlines, NUL, zero-width joiners, lone surrogates) become
    spaces, runs of whitespace become one space, and the ends are trimmed. A value longer than
    `max_length` is cut and ends in '…', so truncation is visible. The text is NFC-normalised so
    the same name typed two ways gives one series.
    """
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if _already_clean(value, max_length):
        return value
    return _cleaned(value, max_length)


def _already_clean(value: str, max_length: int) -> bool:
    """True for short printable ASCII without runs of spaces or spaces at the ends: nothing to change.

    Most user names and commands look like that, and the accounting labels every process on
    every poll (64 GPUs: about 550 values a poll); this check is a few C calls.
    """
    # Printable ASCII has no control characters, is its own NFC form and has no whitespace but ' '.
    return (
        len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and "  " not in value
        and not value.startswith(" ")
        and not value.endswith(" ")
    )


def _cleaned(value: str, max_length: int) -> str:
    prefix = value[: max_length * _SCAN_FACTOR + 16]
    truncated_input = len(prefix) < len(value)
    prefix = unicodedata.normalize("NFC", prefix)
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in prefix)
    cleaned = " ".join(cleaned.split())
    if len(cleaned) > max_length or (truncated_input and len(cleaned) == max_length):
        return cleaned[: max_length - 1].rstrip() + ELLIPSIS
    if truncated_input:
        return cleaned + ELLIPSIS  # content beyond the scanned prefix was dropped: say so
    return cleaned
