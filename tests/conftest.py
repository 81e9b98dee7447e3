"""Shared, generic fixtures: a free loopback port, fake AWS credentials and the exporter as a real subprocess."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
T = TypeVar("T")


# Programs the suite runs for real, and the Debian package that brings each. A missing one stops
# the run at once with one message, instead of a page of skips that hides what was not tested.
EXTERNAL_TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "promtool": (("promtool",), "prometheus"),
    "prometheus": (("prometheus",), "prometheus"),
    "amtool": (("amtool",), "prometheus-alertmanager"),
    "alertmanager": (("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager"),
    "systemd-analyze": (("systemd-analyze",), "systemd"),
    "kubectl": (("kubectl",), "kubectl"),
    "chromium": (("chromium", "chromium-browser"), "chromium"),
    "victoria-metrics": (("victoria-metrics",), "victoria-metrics"),
}
# A developer may run a subset without the tools; CI never may.
OPTIONAL_TOOLS_ENV = "ACCEL_TEST_TOOLS"


def missing_tools() -> dict[str, str]:
    """Each external tool that is not on the PATH, with the Debian package to install."""
    return {
        name: package
        for name, (commands, package) in EXTERNAL_TOOLS.items()
        if not any(shutil.which(command) for command in commands)
    }


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop before the first test when a tool the suite runs for real is missing."""
    missing = missing_tools()
    if not missing or (os.environ.get(OPTIONAL_TOOLS_ENV) == "optional" and not _in_ci()):
        return
    packages = " ".join(sorted(set(missing.values())))
    pytest.exit(
        f"missing tools: {', '.join(sorted(missing))}. Install them with `apt-get install {packages}` "
        f"(.ci/run does), or set {OPTIONAL_TOOLS_ENV}=optional to skip the tests that need them "
        "(refused under CI=true).",
        returncode=4,
    )


# Modules that start several processes, real Prometheus/Alertmanager, long simulations or package
# builds: `make test-fast` (-m "not slow") leaves them out; `make test` runs everything. Measured
# with --durations on a 2-core machine: each of these takes 5-50 s, the rest well under 60 s together.
SLOW_MODULES = frozenset(
    {
        "test_alerts_promtool",
        "test_attribution_bounds",
        "test_carbon_reload",
        "test_context_aws_pricing",
        "test_cli",
        "test_core_daemon",
        "test_core_gpu_scripts",
        "test_core_promtool",
        "test_core_slow_poll",
        "test_e2e_bundle",
        "test_golden_metrics",
        "test_gpm_accounting",
        "test_money_demo",
        "test_neuron_source",
        "test_packaging",
        "test_reliability_faults",
        "test_reliability_fuzz",
        "test_reliability_hang",
        "test_reliability_signals",
        "test_reliability_soak",
        "test_reliability_storm",
        "test_report_errors",
        "test_report_prometheus",
        "test_report_victoriametrics",
        "test_slurm_demo",
        "test_state_idle_clock",
        "test_suite_tools",
        "test_web_auth_flood",
        "test_web_connections",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of a SLOW_MODULES module `slow`."""
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true a skipped test is a failure: nothing may go untested without a word."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true: {report.longrepr}"


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = 60.0, explain: Callable[[], str] | None = None
) -> None:
    """Poll `check` until it holds; fail naming `what` (and `explain()`, e.g. a process's log) after
    `timeout` s. Deadlines are generous on purpose: on a loaded 2-core machine a condition can take
    many times its usual time."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid: it exited and was reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`, failing the test if it has not returned after `seconds`: for calls that a
    regression would block forever (reading a FIFO), so the suite fails instead of hanging."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # handed back to the test below
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)  # a blocked worker must not keep pytest alive
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still blocked after {seconds:.0f} s")
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def free_port() -> int:
    """A free loopback port."""
    return pick_free_port()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials for boto3 (signed requests to the loopback fakes only); no profile files, no real IMDS."""
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_RETRY_MODE",
        "AWS_MAX_ATTEMPTS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/secret/key/for/loopback/tests/only")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class HttpResult:
    """One HTTP answer; `body` is the raw (possibly gzipped) bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> HttpResult:
    """GET without following anything clever; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpResult(response.status, dict(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, dict(exc.headers.items()), exc.read())


@dataclass
class ExporterProcess:
    """A running `python -m exporter`; its stdout and stderr go to `log_path`."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> HttpResult:
        return http_get(self.url + path, headers)

    def metrics(self) -> str:
        result = self.get("/metrics")
        assert result.status == 200, result.text
        return result.text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Poll /-/ready until 200; fails with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/-/ready").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"exporter not ready after {timeout}s:\n{self.log()}")


def exporter_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child exporter: no ACCEL_* settings leak in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def start_exporter(
    args: Sequence[str],
    log_path: Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    preexec_fn: Callable[[], None] | None = None,
) -> ExporterProcess:
    """Start the exporter listening on 127.0.0.1:`port` and (by default) wait for /-/ready."""
    port = port or pick_free_port()
    argv = (sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}", *args)
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=exporter_env(env), preexec_fn=preexec_fn
    )
    log_file.close()
    exporter = ExporterProcess(proc, port, log_path, tuple(args))
    if wait:
        try:
            exporter.wait_ready()
        except BaseException:
            exporter.stop()
            raise
    return exporter


@pytest.fixture
def run_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """A factory: `run_exporter(["--demo", "p4d-idle-fleet"])`; every process is stopped afterwards."""
    started: list[ExporterProcess] = []

    def factory(args: Sequence[str], **kwargs: object) -> ExporterProcess:
        log_path = tmp_path / f"exporter-{len(started)}.log"
        exporter = start_exporter(args, log_path, **kwargs)  # type: ignore[arg-type]
        started.append(exporter)
        return exporter

    yield factory
    for exporter in started:
        exporter.stop()


def script_module(module_name: str, path: Path) -> ModuleType:
    """Import a script that is not in a package, once per run."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def bench_module(name: str) -> ModuleType:
    """Import `bench/<name>.py` (not a package) so tests run the benchmarks' code in short form."""
    return script_module(f"bench_{name}", ROOT / "bench" / f"{name}.py")


def grafana_generator() -> ModuleType:
    """Import grafana/generate.py, the dashboards' source."""
    return script_module("grafana_generate", ROOT / "grafana" / "generate.py")


def run_cli(*args: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m exporter ARGS` from the checkout and return what it did."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=ROOT,
        env=exporter_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
