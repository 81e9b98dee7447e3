"""Basic-auth checks: their own bounded thread, timing of unknown users, long passwords (issue 13, items 3 and 7)."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import bcrypt
import pytest

from exporter.web import webconfig
from exporter.web.webconfig import BasicAuthChecker


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def hashed(password: bytes, rounds: int) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds)).decode()


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that fails every submission: nothing may use it."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        raise AssertionError(f"{getattr(fn, '__name__', fn)} ran on the event loop's default executor")


@pytest.mark.asyncio
async def test_bcrypt_never_runs_on_the_default_executor() -> None:
    refusing = RefusingExecutor()
    asyncio.get_running_loop().set_default_executor(refusing)
    checker = BasicAuthChecker()
    users = {"prometheus": hashed(b"right", 4)}
    assert await checker.check(basic("prometheus", "right"), users) == "prometheus"
    assert await checker.check(basic("prometheus", "wrong"), users) is None
    assert await checker.check(basic("ghost", "wrong"), users) is None
    refusing.shutdown()


@pytest.mark.asyncio
async def test_checks_past_the_queue_limit_are_refused_at_once_and_cached_users_still_pass() -> None:
    checker = BasicAuthChecker(max_pending=2)
    users = {"prometheus": hashed(b"right", 8)}
    assert await checker.check(basic("prometheus", "right"), users) == "prometheus"  # now cached
    wrong = [checker.check(basic("prometheus", f"wrong{n}"), users) for n in range(5)]
    results = await asyncio.gather(*wrong, return_exceptions=True)
    assert results[:2] == [None, None]
    assert all(isinstance(result, webconfig.AuthBusy) for result in results[2:])
    flood = [asyncio.ensure_future(checker.check(basic("prometheus", f"x{n}"), users)) for n in range(2)]
    assert await checker.check(basic("prometheus", "right"), users) == "prometheus"  # no queue for it
    await asyncio.gather(*flood)


@pytest.mark.asyncio
async def test_unknown_user_takes_as_long_as_the_slowest_users_wrong_password() -> None:
    checker = BasicAuthChecker()
    users = {"fast": hashed(b"a", 4), "slow": hashed(b"b", 9)}  # the first user's cost is the cheap one

    async def timed(user: str) -> float:
        start = time.perf_counter()
        assert await checker.check(basic(user, "wrong"), users) is None
        return time.perf_counter() - start

    await timed("ghost")  # builds the dummy hash once
    slow = statistics.median([await timed("slow") for _ in range(5)])
    unknown = statistics.median([await timed("ghost") for _ in range(5)])
    print(f"wrong password at cost 9: {slow * 1000:.1f} ms, unknown user: {unknown * 1000:.1f} ms")
    assert 0.5 < unknown / slow < 2.0


@pytest.mark.asyncio
async def test_passwords_over_72_bytes_are_checked_on_their_first_72_as_htpasswd_hashes_them() -> None:
    long = ("correct horse battery staple " * 4).encode()  # 116 bytes
    assert len(long) > webconfig.BCRYPT_MAX_PASSWORD_BYTES
    # htpasswd -B (and every bcrypt that accepts long passwords) hashes only the first 72 bytes.
    users = {"prometheus": hashed(long[:72], 4)}
    checker = BasicAuthChecker()
    assert await checker.check(basic("prometheus", long), users) == "prometheus"
    assert await checker.check(basic("prometheus", long[:72] + b"anything after"), users) == "prometheus"
    assert await checker.check(basic("prometheus", b"X" + long[1:]), users) is None
    assert await checker.check(basic("prometheus", long[:71]), users) is None
