"""Slurm job lookups through a real `scontrol` subprocess: a fake executable first on PATH prints the
JSON shape Slurm's data_parser prints, or fails, hangs or prints garbage; the cache never blocks,
counts every failure by reason and keeps its bounds."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_until

from exporter.clock import ManualClock, SystemClock
from exporter.config.model import SlurmSettings
from exporter.context.owner.slurm import (
    COLLECTOR,
    MAX_WORKERS,
    SlurmJob,
    SlurmJobs,
    SlurmLookupError,
    parse_job_json,
    run_scontrol,
)

# `scontrol show job 4242 --json` on Slurm 23.11 (data_parser/v0.0.40), trimmed to the fields
# around the ones read; numbers that may be unset come as {"set", "infinite", "number"} objects.
REAL_ANSWER = {
    "jobs": [
        {
            "account": "physics",
            "accrue_time": {"set": True, "infinite": False, "number": 1764930000},
            "array_job_id": {"set": True, "infinite": False, "number": 0},
            "array_task_id": {"set": False, "infinite": False, "number": 0},
            "batch_host": "gpu-node-17",
            "cluster": "campus",
            "command": "/home/alice/lattice.sh",
            "cpus": {"set": True, "infinite": False, "number": 16},
            "gres_detail": ["gpu:a100:2(IDX:0-1)"],
            "group_id": 1000,
            "job_id": 4242,
            "job_state": ["RUNNING"],
            "name": "lattice-qcd",
            "nodes": "gpu-node-17",
            "partition": "gpu",
            "qos": "normal",
            "start_time": {"set": True, "infinite": False, "number": 1764930060},
            "tres_alloc_str": "cpu=16,mem=128G,node=1,billing=16,gres/gpu=2",
            "user_id": 1001,
            "user_name": "alice",
        }
    ],
    "last_backfill": {"set": True, "infinite": False, "number": 1764931000},
    "last_update": {"set": True, "infinite": False, "number": 1764931010},
    "meta": {
        "plugin": {
            "type": "openapi/slurmctld",
            "name": "Slurm OpenAPI slurmctld",
            "data_parser": "data_parser/v0.0.40",
            "accounting_storage": "accounting_storage/slurmdbd",
        },
        "client": {"source": "/dev/pts/0", "user": "root", "group": "root"},
        "command": ["show", "job", "4242"],
        "slurm": {"version": {"major": "23", "micro": "1", "minor": "11"}, "release": "23.11.1", "cluster": "campus"},
    },
    "errors": [],
    "warnings": [],
}


def fake_scontrol(folder: Path, body: str) -> Path:
    """Write `folder/scontrol`, a shell script; its arguments are appended to `folder/calls`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {folder}/calls\n{body}\n', encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def answering(folder: Path) -> Path:
    (folder / "answer.json").parent.mkdir(parents=True, exist_ok=True)
    (folder / "answer.json").write_text(json.dumps(REAL_ANSWER), encoding="utf-8")
    return fake_scontrol(
        folder,
        f'[ "$3" = 4242 ] || {{ echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }}\ncat {folder}/answer.json',
    )


def calls(folder: Path) -> list[str]:
    path = folder / "calls"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A folder put first on PATH for the fake scontrol."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def test_parse_the_real_shape() -> None:
    job = parse_job_json(json.dumps(REAL_ANSWER), "4242")
    assert job == SlurmJob("4242", account="physics", partition="gpu", user="alice", state="RUNNING")


def test_parse_older_and_odd_shapes() -> None:
    older = {"jobs": [{"job_id": 7, "account": "bio", "partition": "p", "user_name": "u", "job_state": "RUNNING"}]}
    assert parse_job_json(json.dumps(older), "7").state == "RUNNING"  # data_parser before v0.0.40: a string
    wrapped = {"jobs": [{"job_id": {"set": True, "number": 8}, "account": 5}]}
    assert parse_job_json(json.dumps(wrapped), "8") == SlurmJob("8")  # a non-string account is not trusted
    for text, reason in [
        ("not json", "garbage"),
        ("[1, 2]", "garbage"),
        ('{"jobs": "x"}', "garbage"),
        ('{"jobs": [1, {"job_id": 9}]}', "unknown_job"),
        ("[" * 100000, "garbage"),
    ]:
        with pytest.raises(SlurmLookupError) as caught:
            parse_job_json(text, "4242")
        assert caught.value.reason == reason, text


def test_a_real_subprocess_answers(on_path: Path) -> None:
    script = answering(on_path)
    assert json.loads(run_scontrol(str(script), "4242", 5.0))["jobs"][0]["account"] == "physics"
    assert calls(on_path) == ["show job 4242 --json"]
    with pytest.raises(SlurmLookupError) as caught:
        run_scontrol(str(script), "99", 5.0)
    assert caught.value.reason == "unknown_job"


def test_a_hanging_scontrol_is_killed_with_its_children(on_path: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The shell waits on a child holding stdout open: killing only the shell would leave the read waiting.
    script = fake_scontrol(on_path, f"sleep 300 &\necho $! > {pid_file}\nwait")
    started = time.monotonic()
    with pytest.raises(SlurmLookupError) as caught:
        run_scontrol(str(script), "4242", 0.5)
    assert caught.value.reason == "timeout"
    assert time.monotonic() - started < 30  # the timeout, not the child's 300 s
    child = int(pid_file.read_text())
    wait_until(lambda: not _alive(child), "the hanging child to be gone", timeout=10)


def _alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (a killed grandchild may wait for init to reap it)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):  # it may go between the two calls
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1', "exit_status"),
        ("echo '<html>proxy error</html>'", "garbage"),
        ("head -c 5000000 /dev/zero", "oversized"),
    ],
)
def test_failing_scontrol_is_counted_and_never_fatal(on_path: Path, body: str, reason: str) -> None:
    fake_scontrol(on_path, body)
    jobs = SlurmJobs(SlurmSettings(retry_seconds=3600), SystemClock())
    try:
        assert jobs.job("4242") is None  # answers at once: the lookup runs on the worker
        wait_until(lambda: jobs.errors().get((COLLECTOR, reason)) == 1, f"one {reason} error")
        status = jobs.status()
        assert status is not None and status[0] is False
        assert jobs.job("4242") is None  # the failure is cached until retry_seconds
        assert jobs.settle(5.0)
        assert len(calls(on_path)) == 1
    finally:
        jobs.close()


def test_missing_scontrol_is_counted(on_path: Path) -> None:
    jobs = SlurmJobs(SlurmSettings(scontrol="no-such-scontrol-here"), SystemClock())
    try:
        jobs.job("1")
        wait_until(lambda: jobs.errors().get((COLLECTOR, "missing")) == 1, "a missing error")
    finally:
        jobs.close()


def test_a_hanging_lookup_never_blocks_the_caller(on_path: Path) -> None:
    fake_scontrol(on_path, "exec sleep 300")
    jobs = SlurmJobs(SlurmSettings(timeout_seconds=1.0), SystemClock())
    try:
        started = time.monotonic()
        for job_id in ("1", "2", "3"):
            assert jobs.job(job_id) is None
        assert jobs.settle(0.0) is False  # lookups are still waiting
        assert time.monotonic() - started < 0.5  # the answering side never waits for scontrol
        wait_until(lambda: jobs.errors().get((COLLECTOR, "timeout")) == 3, "three timeouts", timeout=60)
        assert jobs.settle(0.0)
    finally:
        jobs.close()


def test_cache_is_bounded_refreshed_on_expiry_and_keeps_the_last_good_answer(on_path: Path) -> None:
    answers: dict[str, SlurmJob | str] = {}
    asked: list[str] = []

    def lookup(job_id: str) -> SlurmJob:
        asked.append(job_id)
        answer = answers.get(job_id, SlurmJob(job_id, account=f"acct-{job_id}"))
        if isinstance(answer, str):
            raise SlurmLookupError(answer, "scripted failure")
        return answer

    clock = ManualClock()
    jobs = SlurmJobs(SlurmSettings(cache_entries=3, refresh_seconds=600, retry_seconds=60), clock, lookup)
    try:
        for job_id in ("1", "2", "3", "4"):  # one at a time: lookups run in parallel, the order matters here
            jobs.job(job_id)
            assert jobs.settle(10.0)
        assert [jobs.job(j) is not None for j in ("2", "3", "4")] == [True, True, True]
        assert jobs.job("1") is None  # evicted: least recently used of four in a cache of three
        assert jobs.settle(10.0)
        assert asked.count("1") == 2
        assert jobs.job("3") == SlurmJob("3", account="acct-3")
        assert asked.count("3") == 1  # fresh: not asked again

        answers["3"] = "exit_status"
        clock.advance(601)
        assert jobs.job("3") == SlurmJob("3", account="acct-3")  # stale, still answered, refresh queued
        assert jobs.settle(10.0)
        wait_until(lambda: asked.count("3") == 2, "the refresh of job 3")
        assert jobs.job("3") == SlurmJob("3", account="acct-3")  # a failed refresh keeps the last good answer
        answers["3"] = SlurmJob("3", account="moved")
        clock.advance(61)
        jobs.job("3")
        wait_until(lambda: jobs.job("3") == SlurmJob("3", account="moved"), "the account change")
    finally:
        jobs.close()


def test_odd_job_ids_are_never_handed_to_scontrol(on_path: Path) -> None:
    answering(on_path)
    jobs = SlurmJobs(SlurmSettings(), SystemClock())
    try:
        for job_id in ("", "-h", "--all", "4242 5", "x" * 100):
            assert jobs.job(job_id) is None
        assert jobs.settle(1.0)
        assert calls(on_path) == []
        assert SlurmJobs(SlurmSettings(scontrol=""), SystemClock()).job("4242") is None  # lookups off
    finally:
        jobs.close()


def test_close_kills_a_lookup_in_flight(on_path: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "scontrol.pid"
    fake_scontrol(on_path, f"echo $$ > {pid_file}\nexec sleep 300")
    jobs = SlurmJobs(SlurmSettings(timeout_seconds=120), SystemClock())
    jobs.job("4242")
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", "scontrol to start")
    child = int(pid_file.read_text())
    jobs.close()
    wait_until(lambda: not _alive(child), "the scontrol in flight to be killed", timeout=10)


def test_new_jobs_are_looked_up_in_parallel_within_bounds(on_path: Path) -> None:
    fake_scontrol(on_path, "exec sleep 300")
    jobs = SlurmJobs(SlurmSettings(timeout_seconds=60), SystemClock())
    try:
        for job_id in map(str, range(1, 11)):
            jobs.job(job_id)
        wait_until(lambda: len(calls(on_path)) == MAX_WORKERS, f"{MAX_WORKERS} lookups at once")
        workers = [t for t in threading.enumerate() if t.name.startswith("slurm-lookup")]
        assert len(workers) == MAX_WORKERS  # ten new jobs, no more threads or scontrols than the bound
        assert jobs.settle(0.0) is False
    finally:
        jobs.close()
    wait_until(lambda: not any(t.name.startswith("slurm-lookup") for t in threading.enumerate()), "workers to stop")
