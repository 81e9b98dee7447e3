"""Slurm attribution: job IDs from fake cgroup trees (v1 and v2) read through a fake /proc, rules over
`slurm_job_id`, `slurm_account`, `slurm_partition`, the account as the default team, and
dcgm-exporter's job-mapping directory for a GPU with no visible process (bad files included)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.accounting.ledger import Ledger
from exporter.clock import ManualClock
from exporter.config import ConfigInvalid, parse_config
from exporter.config.model import AccountingSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.owner.cgroup import CgroupFacts, parse_cgroup
from exporter.context.owner.hpc_jobs import JobMapping, read_job_mapping
from exporter.context.owner.slurm import SlurmJob
from exporter.context.owner.slurm_host import SlurmHost
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.sources.procfs import ProcFs, process_reading

V1 = """12:devices:/slurm/uid_1001/job_4242/step_0/task_0
11:memory:/slurm/uid_1001/job_4242/step_0/task_0
4:freezer:/slurm/uid_1001/job_4242/step_0
1:name=systemd:/system.slice/slurmd.service
"""
V2 = "0::/system.slice/slurmstepd.scope/job_4243/step_batch/user/task_0\n"
JOBS = {
    "4242": SlurmJob("4242", account="physics", partition="gpu", user="alice"),
    "4243": SlurmJob("4243", account="climate", partition="gpu-long", user="bob"),
    "4108": SlurmJob("4108", account="bio", partition="interactive", user="dave"),
}


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        (V1, CgroupFacts(slurm_job_id="4242", slurm_uid="1001")),
        (V2, CgroupFacts(slurm_job_id="4243")),
        (
            "0::/system.slice/node3_slurmstepd.scope/job_77/step_extern/user/task_special\n",
            CgroupFacts(slurm_job_id="77"),
        ),
        ("5:cpuset:/slurm_node3/uid_0/job_78/step_interactive/task_0\n", CgroupFacts(slurm_job_id="78", slurm_uid="0")),
        ("0::/../../system.slice/slurmstepd.scope/job_79/step_0/user/task_0\n", CgroupFacts(slurm_job_id="79")),
        ("0::/system.slice/slurmstepd.scope/system\n", CgroupFacts(unit="slurmstepd.scope")),  # slurmstepd itself
        ("0::/user.slice/user-1000.slice/job_5/x.scope\n", CgroupFacts(unit="x.scope")),  # no Slurm root
        ("0::/slurm/elsewhere/job_6\n", CgroupFacts()),  # a Slurm root, then not Slurm's layout
    ],
)
def test_job_ids_from_both_cgroup_layouts(text: str, facts: CgroupFacts) -> None:
    assert parse_cgroup(text) == facts


def fake_proc(root: Path, pid: int, uid: int, cgroup: str, command: str = "python train.py") -> None:
    base = root / str(pid)
    base.mkdir(parents=True)
    (base / "stat").write_text(f"{pid} (python) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 4500 0 0")
    (base / "status").write_text(f"Name:\tpython\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (base / "cmdline").write_bytes(command.replace(" ", "\0").encode())
    (base / "cgroup").write_text(cgroup)


def settings(rules: list[dict[str, object]] | None = None, **extra: object):  # type: ignore[no-untyped-def]
    return parse_config({"attribution": {"default_team": "nodes", "rules": rules or [], **extra}}).attribution


def test_facts_from_a_fake_proc_tree_and_the_account_as_default_team(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    (root).mkdir()
    (root / "stat").write_text("btime 1764900000\n")
    fake_proc(root, 501, os.getuid(), V1)
    fake_proc(root, 502, 4_000_000_000, V2)  # a uid with no passwd entry: procfs names it by number
    procfs = ProcFs(str(root))
    v1 = process_reading(501, 1 << 30, procfs.facts(501))
    v2 = process_reading(502, 1 << 30, procfs.facts(502))
    attributor = RuleAttributor(settings(), job_lookup=JOBS.get)
    facts = attributor.process_facts(v1)
    assert (facts["slurm_job_id"], facts["slurm_account"], facts["slurm_partition"]) == ("4242", "physics", "gpu")
    owner = attributor.process_owner(v1)
    assert (owner.team, owner.workload, owner.slurm_job_id, owner.unit) == ("physics", "gpu", "4242", "")
    owner = attributor.process_owner(v2)
    assert (owner.team, owner.workload, owner.slurm_job_id) == ("climate", "gpu-long", "4243")
    assert attributor.process_facts(v2)["user"] == "4000000000"
    # Without scontrol's answer the job ID is known, the account is not: no team (the host's applies).
    unknown = RuleAttributor(settings(), job_lookup=lambda job_id: None).process_owner(v1)
    assert (unknown.team, unknown.slurm_job_id) == ("", "4242")


def test_user_falls_back_to_the_job_owner_when_proc_does_not_say() -> None:
    attributor = RuleAttributor(settings(), job_lookup=JOBS.get)
    hidden = ProcessReading(7, None, user="unknown", cgroup=V1)
    assert attributor.process_facts(hidden)["user"] == "alice"  # scontrol's user_name
    root = ProcessReading(8, None, user="unknown", cgroup=V1.replace("uid_1001", "uid_0"))
    assert RuleAttributor(settings()).process_facts(root)["user"] == "root"  # the v1 path's uid_0, by name
    unnamed = ProcessReading(9, None, user="unknown", cgroup=V1.replace("uid_1001", "uid_4000000000"))
    assert RuleAttributor(settings()).process_facts(unnamed)["user"] == "4000000000"  # no passwd entry


def test_rules_match_slurm_facts_and_template_the_account() -> None:
    rules = [
        {"match": {"slurm_partition": "interactive"}, "team": "{slurm_account}", "workload": "notebooks"},
        {"match": {"slurm_account": "phys*"}, "team": "physics-dept", "workload": "job-{slurm_job_id}"},
        {"match": {"slurm_job_id": "4243"}, "team": "pinned"},
    ]
    attributor = RuleAttributor(settings(rules), job_lookup=JOBS.get)
    cgroup = "0::/system.slice/slurmstepd.scope/job_{}/step_0/user/task_0\n"
    owners = {
        job: attributor.process_owner(ProcessReading(1, None, user="x", cgroup=cgroup.format(job)))
        for job in ("4242", "4243", "4108")
    }
    assert (owners["4242"].team, owners["4242"].workload) == ("physics-dept", "job-4242")
    assert (owners["4243"].team, owners["4243"].workload) == ("pinned", "")
    assert (owners["4108"].team, owners["4108"].workload) == ("bio", "notebooks")
    # The same rules for a job known only from the mapping directory.
    assert attributor.job_owner("4108").team == "bio"
    assert attributor.job_owner("4242").workload == "job-4242"
    assert RuleAttributor(settings(), job_lookup=JOBS.get).job_owner("4243").team == "climate"
    assert RuleAttributor(settings()).job_owner("4243").team == ""  # nothing known: not this owner


def test_config_keys_and_their_errors() -> None:
    config = parse_config(
        {
            "attribution": {
                "hpc_job_mapping_dir": "/run/dcgm-job-map",
                "slurm": {"scontrol": "/opt/slurm/bin/scontrol", "timeout": "2s", "cache_entries": 10},
                "rules": [{"match": {"slurm_account": "x"}, "team": "y"}],
            }
        }
    ).attribution
    assert config.hpc_job_mapping_dir == "/run/dcgm-job-map"
    assert (config.slurm.scontrol, config.slurm.timeout_seconds, config.slurm.cache_entries) == (
        "/opt/slurm/bin/scontrol",
        2.0,
        10,
    )
    with pytest.raises(ConfigInvalid) as caught:
        parse_config(
            {
                "attribution": {
                    "hpc_job_mapping_dir": "run/map",
                    "slurm": {"scontrol": "bin/scontrol", "timeout": "5 years", "cache_size": 3},
                    "rules": [{"match": {"slurm_acount": "x"}, "team": "y"}],
                }
            }
        )
    text = str(caught.value)
    for expected in (
        "attribution.hpc_job_mapping_dir': must be an absolute path",
        "attribution.slurm.scontrol'",
        "attribution.slurm.timeout'",
        "attribution.slurm.cache_size': unknown key",
        "attribution.rules[0].match.slurm_acount': unknown fact",
    ):
        assert expected in text, text


def gpu(index: int, mig: int | None = None) -> DeviceIdentity:
    name = f"nvidia{index}" if mig is None else f"nvidia{index}-mig{mig}"
    return DeviceIdentity(name, f"GPU-{index}-{mig}", "nvidia", "A100", "gpu" if mig is None else "mig")


def test_the_mapping_directory_and_its_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    folder.mkdir()
    (folder / "0").write_text("4242\n")
    (folder / "1").write_text("4243\n\n4244\n4243\n")  # two jobs share the GPU; a repeat counts once
    (folder / "2.1").write_text("4108\n")  # MIG: <gpu>.<gpu instance>
    (folder / "3").write_text("--all\nrm -rf /\n4300\n")  # lines that are not job IDs are skipped
    (folder / "notes.txt").write_text("4242\n")
    (folder / "4").mkdir()
    (folder / "5").write_bytes(b"1\n" * 40000)  # over 64 KiB
    (folder / ".0.tmp").write_text("1\n")  # a prolog's temporary file
    mapping, problems = read_job_mapping(str(folder))
    assert mapping.for_device(gpu(0)) == ("4242",)
    assert mapping.for_device(gpu(1)) == ("4243", "4244")
    assert mapping.for_device(gpu(2, 1)) == ("4108",)
    assert mapping.for_device(gpu(2)) == ()
    assert mapping.for_device(gpu(3)) == ("4300",)
    assert mapping.for_device(DeviceIdentity("neuroncore0", "", "aws", "trn1", "neuroncore")) == ()
    reasons = sorted(p.reason for p in problems)
    assert reasons == [
        "job_map_bad_file",
        "job_map_bad_file",
        "job_map_bad_file",
        "job_map_bad_line",
        "job_map_bad_line",
    ]
    assert any("notes.txt" in p.message for p in problems)
    assert read_job_mapping(str(tmp_path / "absent")) == (JobMapping(), ())  # no job yet: no prolog has run
    if os.getuid() != 0:
        folder.chmod(0)
        try:
            _, problems = read_job_mapping(str(folder))
            assert [p.reason for p in problems] == ["job_map_unreadable"]
        finally:
            folder.chmod(0o755)


async def test_a_mapped_gpu_without_a_process_is_charged_to_the_job_account(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    folder.mkdir()
    (folder / "1").write_text("4243\n")
    (folder / "junk").write_text("x")
    clock = ManualClock()
    attribution = settings(hpc_job_mapping_dir=str(folder))
    slurm = SlurmHost(attribution, clock, lookup=lambda job_id: JOBS[job_id])
    await slurm.refresh()
    await slurm.refresh()
    assert slurm.errors() == {("slurm", "job_map_bad_file"): 1}  # counted once while it stays
    await slurm.settle(10.0)  # the refresh queued the listed job's lookup
    ledger = Ledger(AccountingSettings())
    ledger.set_device_jobs(slurm.jobs_for_device)
    attributor = RuleAttributor(attribution, job_lookup=slurm.job)
    context = HostContext(HostIdentity(), PriceQuote(dollars_per_hour=8.0), attributor)

    def report() -> SourceReport:
        devices = tuple(
            DeviceReading(gpu(i), True, busy_seconds=0.5, covered_seconds=1.0, utilization=0.5) for i in (0, 1)
        )
        return SourceReport("nvml", devices, True, 0.01, clock.time())

    ledger.ingest(report(), context, clock.monotonic())
    clock.advance(3600)
    ledger.ingest(report(), context, clock.monotonic())
    owners = {d.identity.device: (d.owner.team, d.owner.workload) for d in ledger.snapshot(clock.monotonic()).devices}
    assert owners == {"nvidia0": ("nodes", ""), "nvidia1": ("climate", "gpu-long")}
    cost = dict(next(d for d in ledger.snapshot(clock.monotonic()).devices if d.identity.device == "nvidia1").cost)
    assert cost[("climate", "gpu-long")] == pytest.approx(4.0, rel=1e-9)  # half of the $8/h instance for 1 h
    slurm.close()


async def test_a_reload_swaps_only_what_changed(tmp_path: Path) -> None:
    folder = tmp_path / "map"
    folder.mkdir()
    (folder / "0").write_text("4242\n")
    asked: list[str] = []

    def lookup(job_id: str) -> SlurmJob:
        asked.append(job_id)
        return JOBS[job_id]

    slurm = SlurmHost(settings(hpc_job_mapping_dir=str(folder)), ManualClock(), lookup=lookup)
    try:
        await slurm.refresh()
        await slurm.settle(10.0)
        assert slurm.job("4242") == JOBS["4242"] and slurm.jobs_for_device(gpu(0)) == ("4242",)
        slurm.apply(settings(hpc_job_mapping_dir=str(folder)))  # same settings: the cache stays
        assert slurm.job("4242") == JOBS["4242"] and asked == ["4242"]
        slurm.apply(settings(hpc_job_mapping_dir=str(folder), slurm={"timeout": "2s"}))
        assert slurm.job("4242") is None  # a new, empty cache under the new settings
        await slurm.settle(10.0)
        assert slurm.job("4242") == JOBS["4242"] and asked == ["4242", "4242"]
        slurm.apply(settings())  # the mapping directory turned off
        await slurm.refresh()
        assert slurm.jobs_for_device(gpu(0)) == ()
    finally:
        slurm.close()
