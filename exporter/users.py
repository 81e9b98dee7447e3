"""User names for numeric uids, shared by the process reader (/proc) and attribution (Slurm's cgroup paths)."""

from __future__ import annotations

import pwd
from functools import lru_cache


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    """The passwd name of `uid`, or the number as text when the host has no entry for it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        # Common in containers: no passwd entry for the host's uid.
        return str(uid)
