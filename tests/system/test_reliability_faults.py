"""Faults the NVML simulator can inject: the exporter keeps serving, says so in its self-metrics,
and no counter loses a value.

The unit tests run the real NvmlSource, Ledger and exposition on a ManualClock (bench/soak.py's
harness) and compare every counter with a ground truth integrated from the scenario. One test
runs the daemon as a subprocess and scrapes it over HTTP while faults come and go.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import bench_module

soak: Any = bench_module("soak")
MINUTE = 60.0

BASE = {
    "name": "faults",
    "description": "Two GPUs, one steady and one on a schedule, each with churning jobs.",
    "host": {"provider": "aws", "instance_type": "g6.12xlarge", "region": "us-east-1", "tags": {"Team": "infra"}},
    "nvml": {"sample_period": "1s", "buffer_samples": 120},
    "gpus": [
        {"index": 0, "model": "NVIDIA L4", "utilization": 0.37},
        {
            "index": 1,
            "model": "NVIDIA L4",
            "utilization": {
                "schedule": {"repeat": "10m", "steps": [{"at": 0, "value": 0.8}, {"at": "5m", "value": 0}]}
            },
        },
    ],
    "processes": [
        {"pid": 1000, "device": "0", "memory": "2GiB", "user": "ann", "every": "4s", "lifetime": "9s"},
        {"pid": 50000, "device": "1", "memory": "1GiB", "user": "ben", "every": "6s", "lifetime": "8s"},
    ],
}
PRICES = ((0.0, 4.6), (10 * MINUTE, 5.5))


def fleet_with(**changes: Any) -> Any:
    """The base scenario with top-level keys replaced, or GPU keys merged via gpu0=/gpu1=."""
    document = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        if key.startswith("gpu"):
            document["gpus"][int(key[3:])].update(value)
        else:
            document[key] = value
    return soak.AcceleratedFleet(soak.parse_scenario(document, "faults"), prices=PRICES)


def run(fleet: Any, seconds: float, watch: Any) -> list[Any]:
    """Poll for `seconds`, publishing after every poll; returns each poll's parsed exposition."""
    out = []
    for _ in range(round(seconds / fleet.interval)):
        fleet.step()
        samples = soak.parse_exposition(fleet.publish())
        watch.observe(samples)
        out.append(samples)
    return out


def errors(samples: Any, reason: str, collector: str = "nvml") -> float:
    return float(soak.total(samples, "accel_exporter_errors_total", collector=collector, reason=reason))


def success(samples: Any, collector: str = "nvml") -> float:
    return float(soak.total(samples, "accel_exporter_collector_success", collector=collector))


def test_gpu_lost_and_back() -> None:
    fleet = fleet_with(gpu1={"faults": [{"type": "lost", "at": "10m", "until": "20m"}]})
    watch = soak.CounterWatch()
    before = run(fleet, 10 * MINUTE - 15, watch)[-1]
    busy_before = soak.total(before, "accel_busy_seconds_total", device="nvidia1")
    assert busy_before > 0
    during = run(fleet, 10 * MINUTE, watch)
    for samples in during:
        assert soak.total(samples, "accel_device_up", device="nvidia1") == 0
        assert soak.total(samples, "accel_device_up", device="nvidia0") == 1
        assert success(samples) == 0
        # Still described, still costing money, but no process claims it and busy time stands still.
        assert soak.total(samples, "accel_device_info", device="nvidia1") == 1
        assert soak.values(samples, "accel_state", "state", device="nvidia1")["idle_free"] == 1
        assert not [labels for labels, _ in samples["accel_process_info"] if labels["device"] == "nvidia1"]
        assert soak.total(samples, "accel_busy_seconds_total", device="nvidia1") == busy_before
    assert [errors(s, "GpuIsLost") for s in during] == [float(n) for n in range(1, len(during) + 1)]
    after = run(fleet, 10 * MINUTE, watch)[-1]
    assert soak.total(after, "accel_device_up", device="nvidia1") == 1
    assert success(after) == 1
    assert soak.total(after, "accel_busy_seconds_total", device="nvidia1") > busy_before
    assert soak.compare(fleet, after) == []
    assert watch.problems == []


PER_POLL_CALLS = [
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
]
# Without samples the interval is classified by the last known level, without a process list
# the device looks unheld: state and owner then follow the fallback, totals stay exact.
AFFECTS_STATE = {
    "nvmlDeviceGetSamples",
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetGraphicsRunningProcesses_v3",
}


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("call", PER_POLL_CALLS)
def test_nvml_error_on_each_call(call: str, every: int) -> None:
    fault = {"type": "error", "call": call, "error": "Timeout", "every": every, "at": "5m", "until": "6m"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    run(fleet, 5 * MINUTE, watch)
    during = run(fleet, 1 * MINUTE, watch)
    assert errors(during[-1], "Timeout") > 0
    for samples in during:
        # An error on one call is not a lost GPU: the device stays up and keeps being described.
        assert soak.total(samples, "accel_device_up") == 2
        assert len(samples["accel_device_info"]) == 2
    counted = errors(during[-1], "Timeout")
    after = run(fleet, 5 * MINUTE, watch)[-1]
    assert errors(after, "Timeout") == counted  # the fault ended, the count stopped
    exact = call not in AFFECTS_STATE
    assert soak.compare(fleet, after, states=exact, owners=exact) == []
    assert watch.problems == []


def test_samples_kept_in_the_driver_buffer_are_not_lost() -> None:
    # Four polls without samples: the 120 s buffer still holds them, so busy time catches up exactly.
    fault = {"type": "error", "call": "nvmlDeviceGetSamples", "error": "Timeout", "at": "5m", "until": "6m"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    before = run(fleet, 5 * MINUTE - 15, watch)[-1]
    stalled = run(fleet, 1 * MINUTE, watch)  # the polls at 300, 315, 330 and 345 s
    assert all(s["accel_busy_seconds_total"] == before["accel_busy_seconds_total"] for s in stalled)
    after = run(fleet, 15, watch)[-1]
    busy = soak.values(after, "accel_busy_seconds_total", "device")
    assert busy == pytest.approx({n: fleet.truth.devices[n].busy for n in busy}, rel=1e-9)
    assert errors(after, "samples_lost") == 0


def test_a_gap_longer_than_the_sample_buffer_is_counted() -> None:
    # Five minutes without samples overflow the 120 s buffer: the gap is flagged as samples_lost
    # and charged at the level of the oldest surviving sample, exact for GPU 0's steady load.
    fault = {"type": "error", "call": "nvmlDeviceGetSamples", "error": "Timeout", "at": "5m", "until": "10m"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    after = run(fleet, 12 * MINUTE, watch)[-1]
    assert errors(after, "samples_lost") == 2  # one per GPU, once
    assert soak.total(after, "accel_busy_seconds_total", device="nvidia0") == pytest.approx(
        fleet.truth.devices["nvidia0"].busy, rel=1e-9
    )
    assert watch.problems == []


ENUMERATION_CALLS = [
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetName",
]


@pytest.mark.parametrize("call", ENUMERATION_CALLS)
def test_nvml_error_while_enumerating(call: str) -> None:
    fault = {"type": "error", "call": call, "error": "Timeout", "at": 0, "until": "100s"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    early = run(fleet, 90, watch)
    for samples in early:
        # Serving and honest about it: no device is up (unidentified GPUs show as down, or not at all).
        assert success(samples) == 0
        assert soak.total(samples, "accel_device_up") == 0
    assert errors(early[-1], "Timeout") >= 2
    after = run(fleet, 10 * MINUTE, watch)[-1]
    assert success(after) == 1
    assert sorted(labels["device"] for labels, _ in after["accel_device_info"]) == ["nvidia0", "nvidia1"]
    assert soak.compare(fleet, after) == []
    assert watch.problems == []


# Optional calls with a fallback: the minor number falls back to the index, the MIG mode to
# "not MIG", and XID events are switched off. They are not errors of the poll.
OPTIONAL_CALLS = ["nvmlDeviceGetMinorNumber", "nvmlDeviceGetMigMode", "nvmlEventSetCreate", "nvmlDeviceRegisterEvents"]


@pytest.mark.parametrize("call", OPTIONAL_CALLS)
def test_nvml_error_on_optional_calls(call: str) -> None:
    fault = {"type": "error", "call": call, "error": "Timeout"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    after = run(fleet, 10 * MINUTE, watch)[-1]
    assert success(after) == 1
    assert sorted(labels["device"] for labels, _ in after["accel_device_info"]) == ["nvidia0", "nvidia1"]
    assert soak.compare(fleet, after) == []
    assert watch.problems == []


def test_nvml_init_error_backs_off_and_recovers() -> None:
    fault = {"type": "init_error", "error": "DriverNotLoaded", "at": 0, "until": "5m"}
    fleet = fleet_with(nvml={**BASE["nvml"], "faults": [fault]})
    watch = soak.CounterWatch()
    early = run(fleet, 5 * MINUTE, watch)
    assert all(success(s) == 0 for s in early)
    attempts = errors(early[-1], "DriverNotLoaded")
    # Retried with exponential backoff, not on every one of the 20 polls.
    assert 3 <= attempts <= 6
    after = run(fleet, 10 * MINUTE, watch)[-1]
    assert success(after) == 1
    assert errors(after, "DriverNotLoaded") == attempts
    assert soak.compare(fleet, after) == []
    assert watch.problems == []


def test_nvml_library_missing_keeps_serving() -> None:
    fleet = fleet_with(nvml={**BASE["nvml"], "missing": True})
    watch = soak.CounterWatch()
    polls = run(fleet, 60 * MINUTE, watch)
    last = polls[-1]
    assert success(last) == 0
    assert "accel_device_info" not in last
    assert "accel_cost_dollars_total" not in last
    # The retry delay doubles up to 5 min: a handful of attempts in an hour, not 240.
    assert 5 <= errors(last, "LibraryNotFound") <= 20
    assert soak.total(last, "accel_exporter_build_info") == 1


def test_xid_events_are_counted_once_and_kept() -> None:
    fleet = fleet_with(
        gpu0={"faults": [{"type": "xid", "xid": 79, "at": "2m"}]},
        gpu1={"faults": [{"type": "xid", "xid": 48, "at": "3m"}, {"type": "xid", "xid": 48, "at": "4m"}]},
    )
    watch = soak.CounterWatch()
    last = run(fleet, 10 * MINUTE, watch)[-1]
    assert soak.total(last, "accel_nvidia_xid_errors_total", device="nvidia0", xid="79") == 1
    assert soak.total(last, "accel_nvidia_xid_errors_total", device="nvidia1", xid="48") == 2
    assert soak.compare(fleet, last) == []
    assert watch.problems == []


# --- the daemon over HTTP --------------------------------------------------------------------------


def test_daemon_keeps_serving_through_faults(tmp_path: Path, run_exporter: Any) -> None:
    document = yaml.safe_load(yaml.safe_dump(BASE))
    document["nvml"] = {
        "faults": [{"type": "error", "call": "nvmlDeviceGetPowerUsage", "error": "Timeout", "every": 3}]
    }
    document["gpus"][1]["faults"] = [{"type": "lost", "at": "1.5s", "until": "3s"}, {"type": "xid", "xid": 13, "at": 2}]
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(document))
    exporter = run_exporter(["--demo", str(path), "--collector.interval", "200ms"])
    watch = soak.CounterWatch()
    seen_up: list[float] = []
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        result = exporter.get("/metrics")
        assert result.status == 200
        samples = soak.parse_exposition(result.text)
        watch.observe(samples)
        seen_up.append(soak.total(samples, "accel_device_up", device="nvidia1"))
        time.sleep(0.05)
    assert 0.0 in seen_up, "the lost window was never seen"
    assert seen_up[-1] == 1.0, "the GPU never came back"
    assert seen_up.index(0.0) > 0
    assert errors(samples, "GpuIsLost") >= 1
    assert errors(samples, "Timeout") >= 1
    assert soak.total(samples, "accel_nvidia_xid_errors_total", device="nvidia1", xid="13") == 1
    assert success(samples) == 1
    assert watch.problems == []
    assert exporter.get("/-/healthy").status == 200


NEURON_SCENARIO = {
    "name": "neuron-faults",
    "description": "One Inferentia2 whose neuron-monitor misbehaves in every way the simulator knows.",
    "host": {
        "provider": "aws",
        "instance_type": "inf2.xlarge",
        "instance_id": "i-0neuronfaults",
        "region": "us-east-1",
    },
    "neuron": {
        "device_type": "inferentia2",
        "devices": 1,
        "cores_per_device": 2,
        "runtimes": [
            {
                "pid": 4242,
                "tag": "serve",
                "cores": [0],
                "utilization": 0.5,
                "memory_per_core": "4GiB",
                "executions_per_second": 50,
            }
        ],
        # Each run: a record at once, one after 1 s padded past the 16 MiB line limit, one after
        # 2 s with a group error, each followed by a garbage line, then a crash.
        "faults": {
            "crash_after_lines": 3,
            "garbage_every": 1,
            "oversized_every": 2,
            "oversized_bytes": "17MiB",
            "error_every": 3,
        },
    },
}


def test_neuron_monitor_crash_loop_garbage_and_oversized_lines(tmp_path: Path, run_exporter: Any) -> None:
    scenario = tmp_path / "neuron-faults.yaml"
    scenario.write_text(yaml.safe_dump(NEURON_SCENARIO))
    config = tmp_path / "config.yaml"
    config.write_text("neuron: {period: 1s}\n")
    exporter = run_exporter(["--demo", str(scenario), "--config.file", str(config), "--collector.interval", "250ms"])
    started = time.monotonic()
    watch = soak.CounterWatch()
    up: list[float] = []
    while time.monotonic() - started < 7.0:
        result = exporter.get("/metrics")
        assert result.status == 200
        samples = soak.parse_exposition(result.text)
        watch.observe(samples)
        if "accel_device_info" in samples:
            up.append(soak.total(samples, "accel_device_up", device="neuroncore0"))
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    for reason in ("restart", "parse", "oversize", "group_error"):
        assert errors(samples, reason, "neuron") >= 1, reason
    assert errors(samples, "restart", "neuron") >= 2
    # Down while the monitor waits to be restarted, up again once it writes.
    assert 0.0 in up and up.index(0.0) > 0 and 1.0 in up[up.index(0.0) :]
    busy = soak.total(samples, "accel_busy_seconds_total", device="neuroncore0")
    assert 0 < busy <= 0.5 * elapsed + 0.5
    assert soak.total(samples, "accel_neuron_execution_total", device="neuroncore0") > 0
    assert watch.problems == []
    assert exporter.get("/-/healthy").status == 200


# --- context: metadata timeouts, price API throttling, a full disk for the price cache ----------


@contextmanager
def full_state_directory(tmp_path: Path) -> Iterator[str]:
    """A state directory where nothing can be written: a full 4 KiB tmpfs when this process may
    mount one (root in CI and containers), else a read-only directory, else (root without
    CAP_SYS_ADMIN) a path below a regular file."""
    target = tmp_path / "state"
    target.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs", str(target)], capture_output=True, check=False
    )
    if mount.returncode == 0:
        try:
            with pytest.raises(OSError) as full, (target / "filler").open("wb") as filler:
                for _ in range(64):
                    filler.write(b"x" * 4096)
                    filler.flush()
                    os.fsync(filler.fileno())
            assert full.value.errno == errno.ENOSPC
            yield str(target)
            # The failed atomic writes left no temporary file behind on the full disk.
            assert sorted(p.name for p in target.iterdir()) == ["filler"]
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
    elif os.geteuid() != 0:
        target.chmod(0o555)
        try:
            yield str(target)
        finally:
            target.chmod(0o755)
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        yield str(blocker / "state")


@pytest.fixture
def fake_aws(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for boto3 (conftest's aws_env), and no real-time waits between its retries."""
    # botocore's retry waits (up to 1 + 2 + 4 s with jitter) are real time: skip them, keep the retries.
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0)
    monkeypatch.setattr("botocore.retries.adaptive.ClientRateLimiter.on_sending_request", lambda self, **kw: None)


def test_context_faults_show_in_self_metrics_and_lose_no_dollar(tmp_path: Path, fake_aws: None) -> None:
    from fakes.aws_api import AwsApiFake
    from fakes.imds import AwsImdsFake
    from fakes.server import serve

    imds = AwsImdsFake(delay=2.0)  # accepts, then answers long after the 200 ms budget
    api = AwsApiFake(throttle_next=4)  # the first lookup is throttled on the call and its 3 retries
    with (
        serve(imds.app()) as imds_server,
        serve(api.app()) as api_server,
        full_state_directory(tmp_path) as state,
    ):
        document = {
            # The identity is configured, so pricing has work to do while metadata is silent.
            "host": {"provider": "aws", "instance_type": "p4d.24xlarge", "region": "us-east-1", "zone": "us-east-1a"},
            "metadata": {"providers": ["aws"], "aws_endpoint": imds_server.url, "timeout": "200ms"},
            "pricing": {"aws": {"endpoint_url": api_server.url, "timeout": "20s"}},
        }
        exposition, truth, watch, prices = asyncio.run(drive_daemon(document, state, imds, api))
    samples = exposition
    # Throttling and the full disk are counted; a silent metadata service is not an error (it
    # is what every on-premises host sees) but its poll takes the whole timeout budget.
    assert errors(samples, "throttled", "price") >= 1
    assert errors(samples, "cache_write", "price") >= 1
    # The table price while AWS throttled, the live price once the lookup was retried (15 min later).
    assert [source for source, _ in prices] == ["builtin", "aws-pricing-api"]
    assert soak.total(samples, "accel_exporter_collector_success", collector="price") == 1
    # IMDS answered again after 10 minutes: the identity now carries its instance id.
    assert soak.values(samples, "accel_instance_info", "instance_id") == {"i-0d4e5f6a7b8c9d0e1": 1.0}
    assert watch.problems == []
    for name, book in truth.devices.items():
        assert soak.total(samples, "accel_cost_dollars_total", device=name) == pytest.approx(
            sum(book.cost.values()), rel=1e-9
        )
        states = soak.values(samples, "accel_state_seconds_total", "state", device=name)
        assert sum(states.values()) == pytest.approx(truth.last - book.first)


def test_a_silent_metadata_service_shows_as_the_time_spent_waiting() -> None:
    # No answer is what every on-premises host sees, so it is not an error; the metadata
    # collector's duration shows the budget spent (and alerts can watch it).
    from fakes.server import silent_listener

    from exporter.config import parse_config
    from exporter.context.provider import ContextProvider
    from exporter.daemon import Daemon, Options

    async def start(url: str) -> str:
        config = parse_config(
            {
                "host": {"provider": "aws", "instance_type": "p4d.24xlarge", "region": "us-east-1"},
                "metadata": {"providers": ["aws"], "aws_endpoint": url, "timeout": "300ms"},
                "pricing": {"aws": {"enabled": False}},
            }
        )
        daemon = Daemon(Options(), config)
        daemon.provider = ContextProvider(config, daemon.clock)
        await daemon._start_context()
        return render(daemon)

    with silent_listener() as url:
        started = time.monotonic()
        samples = soak.parse_exposition(asyncio.run(start(url)))
        assert time.monotonic() - started < 2.0
    duration = soak.total(samples, "accel_exporter_collector_duration_seconds", collector="metadata")
    assert 0.29 <= duration < 1.0
    assert soak.total(samples, "accel_exporter_collector_success", collector="metadata") == 1


async def drive_daemon(document: dict[str, Any], state: str, imds: Any, api: Any) -> tuple[Any, Any, Any, list[Any]]:
    """The daemon's own poll path and context refresh, on a ManualClock, against the fakes."""
    from exporter.clock import ManualClock
    from exporter.config import parse_config
    from exporter.context.provider import ContextProvider
    from exporter.daemon import Daemon, Options
    from exporter.sim.fake_nvml import FakeNvml, SimProcFs
    from exporter.sources.nvml import NvmlSource

    config = parse_config(document)
    scenario = soak.parse_scenario(yaml.safe_load(yaml.safe_dump(BASE)), "faults")
    clock = ManualClock()
    daemon = Daemon(Options(interval=15.0, state_directory=state), config, clock=clock)
    fake = FakeNvml(scenario, clock)
    daemon.sources = [NvmlSource(fake.module, clock, SimProcFs(fake))]
    daemon.provider = ContextProvider(config, clock, None, state_directory=state)
    await daemon._start_context()
    truth = soak.Truth(scenario, config)
    watch = soak.CounterWatch()
    prices: list[tuple[str, float | None]] = []
    for step in range(1, 4 * 45 + 1):  # 45 simulated minutes, context refreshed every minute
        clock.advance(15.0)
        await daemon.poll_once()
        quote = daemon.provider.current().price
        assert quote.accelerator_share == 1.0
        truth.poll(clock.monotonic(), quote.dollars_per_hour)
        if not prices or prices[-1] != (quote.source, quote.dollars_per_hour):
            prices.append((quote.source, quote.dollars_per_hour))
        watch.observe(soak.parse_exposition(render(daemon)))
        if step == 4 * 10:  # after 10 minutes IMDS answers again
            imds.delay = 0.0
        if step % 4 == 0:
            await daemon.provider.refresh()
            daemon._record_context()
    for source in daemon.sources:
        await source.stop()
    return soak.parse_exposition(render(daemon)), truth, watch, prices


def render(daemon: Any) -> str:
    daemon._publish()
    rendered = daemon.cache.text()
    assert rendered is not None
    return str(rendered.body.decode())


def test_gpu_lost_before_start_is_found_when_it_comes_back() -> None:
    fleet = fleet_with(gpu1={"faults": [{"type": "lost", "at": 0, "until": "2m"}]})
    watch = soak.CounterWatch()
    early = run(fleet, 2 * MINUTE - 15, watch)
    for samples in early:
        # The other GPU is not hidden by the dead one, which shows as down.
        assert soak.total(samples, "accel_device_up", device="nvidia0") == 1
        assert soak.total(samples, "accel_device_up", device="nvidia1") == 0
    after = run(fleet, 10 * MINUTE, watch)[-1]
    assert soak.total(after, "accel_device_up", device="nvidia1") == 1
    info = {labels["device"]: labels for labels, _ in after["accel_device_info"]}
    assert info["nvidia1"]["model"] == "NVIDIA L4" and info["nvidia1"]["uuid"]
    assert soak.total(after, "accel_busy_seconds_total", device="nvidia1") > 0
    assert watch.problems == []


def test_context_errors_keep_counting_after_a_reload(tmp_path: Path, fake_aws: None) -> None:
    # SIGHUP builds a new context provider whose error counts start again at zero: the exported
    # counter must keep adding them, not wait until the new counts pass the old ones.
    from fakes.aws_api import AwsApiFake
    from fakes.server import serve

    from exporter.clock import ManualClock
    from exporter.config import load_config
    from exporter.daemon import Daemon, Options

    api = AwsApiFake(deny_pricing=True)
    with serve(api.app()) as server:
        path = tmp_path / "config.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "host": {"provider": "aws", "instance_type": "p4d.24xlarge", "region": "us-east-1"},
                    "metadata": {"providers": []},
                    "pricing": {"aws": {"endpoint_url": server.url, "timeout": "10s"}},
                }
            )
        )

        async def denied_after_each_reload() -> list[float]:
            daemon = Daemon(Options(config_file=str(path)), load_config(str(path)), clock=ManualClock())
            daemon.provider = daemon._new_provider(daemon.config)
            await daemon._start_context()
            counts = [errors(soak.parse_exposition(render(daemon)), "access_denied", "price")]
            for _ in range(2):
                assert await daemon.reload()
                counts.append(errors(soak.parse_exposition(render(daemon)), "access_denied", "price"))
            return counts

        counts = asyncio.run(denied_after_each_reload())
    assert api.pricing_calls == 3
    assert counts == [1.0, 2.0, 3.0]


def test_a_poll_that_raises_does_not_stop_the_poll_loop() -> None:
    # A bug met by one poll (here: a source handing over something that is not a reading) is
    # logged and counted; the next polls run on schedule and publish fresh snapshots.
    from exporter.config import Config
    from exporter.context.provider import ContextProvider
    from exporter.daemon import Daemon, Options
    from exporter.readings import SourceReport

    class Flaky:
        name = "nvml"

        def __init__(self) -> None:
            self.polls = 0

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def poll(self) -> SourceReport:
            self.polls += 1
            broken = ("not a reading",) if self.polls == 2 else ()
            return SourceReport("nvml", broken, True, 0.0, time.time())  # type: ignore[arg-type]

    async def run_loop() -> tuple[int, str]:
        daemon = Daemon(Options(interval=0.05), Config())
        source = Flaky()
        daemon.sources = [source]
        daemon.provider = ContextProvider(daemon.config, daemon.clock)
        task = asyncio.create_task(daemon._poll_loop())
        deadline = time.monotonic() + 60  # the loop must go on past the bad report, however slow the machine
        while source.polls < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return source.polls, render(daemon)

    polls, text = asyncio.run(run_loop())
    assert polls >= 5
    assert errors(soak.parse_exposition(text), "poll_failed", "exporter") == 1
