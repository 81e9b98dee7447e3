"""A simulated `scontrol show job <id> --json`, answering from a scenario's `slurm.jobs` table.

It prints what Slurm's data_parser (v0.0.40, Slurm 23.11) prints: a document with `jobs`,
`last_backfill`, `last_update`, `meta`, `errors` and `warnings`, each job with `job_id`,
`account`, `partition`, `user_name`, `name`, `job_state` (a list) and `start_time` (a set/number
object). An unknown job gets scontrol's message and exit status 1. The demo runs it through a
shell wrapper (see wrapper.py), so the exporter's production lookup code is what reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from exporter.config.reader import ConfigInvalid
from exporter.sim.scenario import Scenario, SimSlurmJob, load_scenario
from exporter.sim.wrapper import write_wrapper

_PROG = "scontrol"
DATA_PARSER = "data_parser/v0.0.40"


def _number(value: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": value}


def job_document(scenario: Scenario, job: SimSlurmJob, now: float) -> dict[str, Any]:
    """The whole `scontrol show job <id> --json` document for one job of the scenario."""
    cluster = scenario.slurm.cluster if scenario.slurm is not None else "cluster"
    entry = {
        "account": job.account,
        "array_job_id": _number(0),
        "cluster": cluster,
        "job_id": job.job_id,
        "job_state": [job.state],
        "name": job.name,
        "partition": job.partition,
        "start_time": _number(int(now + job.started)),
        "user_id": 1000 + job.job_id % 1000,
        "user_name": job.user,
    }
    return {
        "jobs": [entry],
        "last_backfill": _number(int(now)),
        "last_update": _number(int(now)),
        "meta": {
            "plugin": {
                "type": "openapi/slurmctld",
                "name": "Slurm OpenAPI slurmctld",
                "data_parser": DATA_PARSER,
                "accounting_storage": "accounting_storage/slurmdbd",
            },
            "client": {"source": "/dev/pts/0", "user": "root", "group": "root"},
            "command": ["show", "job", str(job.job_id)],
            "slurm": {
                "version": {"major": "23", "micro": "1", "minor": "11"},
                "release": "23.11.1",
                "cluster": cluster,
            },
        },
        "errors": [],
        "warnings": [],
    }


def main(argv: list[str] | None = None) -> int:
    """`scontrol --scenario S show job ID --json`; exit 1 for an unknown job, 2 for bad arguments."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Simulated scontrol for accel-cost-exporter.")
    parser.add_argument("--scenario", required=True, help="scenario name or file")
    parser.add_argument("--json", action="store_true", help="print JSON (the only output this fake knows)")
    parser.add_argument("words", nargs="*", help="show job <id>")
    args = parser.parse_args(argv)
    if len(args.words) != 3 or args.words[:2] != ["show", "job"] or not args.json:
        print(f"{_PROG}: this simulator answers only 'show job <id> --json'", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ConfigInvalid as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    jobs = scenario.slurm.jobs if scenario.slurm is not None else ()
    wanted = args.words[2]
    for job in jobs:
        if str(job.job_id) == wanted:
            print(json.dumps(job_document(scenario, job, time.time()), indent=2))
            return 0
    print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
    return 1


def write_fake_scontrol(directory: Path, scenario: str) -> Path:
    """Write an executable `scontrol` wrapper that runs this fake with `scenario`; returns its path."""
    return write_wrapper(directory, "scontrol", "exporter.sim.scontrol", scenario)


def write_job_mapping(directory: Path, scenario: Scenario) -> Path:
    """Write the scenario's dcgm-exporter job-mapping files (what a Slurm prolog writes) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    mapping = scenario.slurm.job_mapping if scenario.slurm is not None else ()
    for name, job_ids in mapping:
        (directory / name).write_text("".join(f"{job_id}\n" for job_id in job_ids), encoding="utf-8")
    return directory.resolve()


if __name__ == "__main__":
    sys.exit(main())
