"""`--demo onprem-slurm` end to end: the real exporter, the simulated NVML and a simulated `scontrol`
run as a subprocess; the scrape tells the story (owned price, teams that are Slurm accounts, the
idle interactive job, the GPU known only from the job-mapping directory) and promtool accepts it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, ExporterProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

from exporter.sim.scenario import load_scenario
from exporter.sim.scontrol import main as scontrol_main


def samples(text: str, name: str) -> list[dict[str, str]]:
    return [
        {**s.labels, "value": str(s.value)}
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def device_teams(text: str) -> dict[str, set[str]]:
    """The teams each device has been charged to so far (with a positive amount)."""
    teams: dict[str, set[str]] = {}
    for sample in samples(text, "accel_cost_dollars_total"):
        if float(sample["value"]) > 0:
            teams.setdefault(sample["device"], set()).add(sample["team"])
    return teams


def test_the_simulated_scontrol_prints_the_real_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert scontrol_main(["--scenario", "onprem-slurm", "show", "job", "4108", "--json"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert document["meta"]["plugin"]["data_parser"].startswith("data_parser/v0.0.")
    job = document["jobs"][0]
    assert (job["job_id"], job["account"], job["partition"], job["user_name"], job["job_state"]) == (
        4108,
        "bio",
        "interactive",
        "dave",
        ["RUNNING"],
    )
    assert scontrol_main(["--scenario", "onprem-slurm", "show", "job", "1", "--json"]) == 1
    assert "Invalid job id" in capsys.readouterr().err


def test_the_scenario_names_its_config() -> None:
    scenario = load_scenario("onprem-slurm")
    assert Path(scenario.demo_config).is_file()
    assert scenario.slurm is not None and {j.account for j in scenario.slurm.jobs} == {"physics", "climate", "bio"}


def test_onprem_slurm_tells_its_story(run_exporter: Callable[..., ExporterProcess]) -> None:
    exporter = run_exporter(["--demo", "onprem-slurm", "--collector.interval", "1s"])
    wanted = {
        "nvidia0": "physics",
        "nvidia2": "climate",
        "nvidia4": "bio",
        "nvidia5": "bio",
        "nvidia7": "climate",  # no visible process: the job-mapping directory names job 4260
        "nvidia6": "unassigned-nodes",  # free: the host's default team
    }
    wait_until(
        lambda: all(team in device_teams(exporter.metrics()).get(device, set()) for device, team in wanted.items()),
        "every device charged to its Slurm account",
        explain=exporter.log,
    )
    text = exporter.metrics()
    assert 'price_source="owned"' in text
    processes = {s["device"]: s for s in samples(text, "accel_process_info")}
    assert processes["nvidia5"]["slurm_job_id"] == "4108"
    assert (processes["nvidia5"]["team"], processes["nvidia5"]["workload"]) == ("bio", "notebooks")  # the rule
    assert (processes["nvidia3"]["team"], processes["nvidia3"]["workload"]) == ("climate", "gpu-long")  # default
    idle = [s for s in samples(text, "accel_idle_seconds") if s["device"] == "nvidia5"]
    assert float(idle[0]["value"]) > 3 * 86400  # held and idle for days
    assert re.search(r'accel_exporter_collector_success\{collector="slurm"\} 1', text)
    assert 'collector="slurm"' not in "".join(
        line for line in text.splitlines() if line.startswith("accel_exporter_errors_total")
    )
    if shutil.which("promtool") is not None:
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    landing = exporter.get("/").text
    assert "bio" in landing and "owned" in landing and "Slurm job 4108" in landing


def test_a_hanging_scontrol_blocks_neither_polls_nor_scrapes(
    run_exporter: Callable[..., ExporterProcess], tmp_path: Path
) -> None:
    """The onprem-slurm host without its simulated controller: the configured scontrol never answers."""
    scenario = yaml.safe_load((ROOT / "exporter" / "sim" / "scenarios" / "onprem-slurm.yaml").read_text())
    del scenario["slurm"], scenario["demo_config"]
    scenario_file = tmp_path / "no-controller.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario))
    hanging = tmp_path / "scontrol"
    hanging.write_text("#!/bin/sh\nexec sleep 300\n")
    hanging.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"attribution": {"default_team": "nodes", "slurm": {"scontrol": str(hanging), "timeout": "1s"}}})
    )
    exporter = run_exporter(["--demo", str(scenario_file), "--config.file", str(config), "--collector.interval", "1s"])

    def timeouts() -> float:
        return sum(
            float(s["value"])
            for s in samples(exporter.metrics(), "accel_exporter_errors_total")
            if s["collector"] == "slurm" and s["reason"] == "timeout"
        )

    wait_until(lambda: timeouts() >= 3, "three scontrol timeouts", explain=exporter.log)
    first = last_sample(exporter.metrics())
    wait_until(lambda: last_sample(exporter.metrics()) > first, "polls going on while scontrol hangs")
    text = exporter.metrics()
    processes = {s["device"]: s for s in samples(text, "accel_process_info")}
    assert (processes["nvidia5"]["slurm_job_id"], processes["nvidia5"]["team"]) == ("4108", "nodes")
    assert re.search(r'accel_exporter_collector_success\{collector="slurm"\} 0', text)
    assert "gave no answer within 1s" in exporter.log()


def last_sample(text: str) -> float:
    return next(
        float(s["value"])
        for s in samples(text, "accel_exporter_last_sample_timestamp_seconds")
        if s["collector"] == "nvml"
    )
