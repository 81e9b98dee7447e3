"""Golden `/metrics` per built-in scenario: tests/golden/<scenario>.prom, normalised, checked like docs/metrics.md.

    python tests/golden/generate.py           # rewrite every golden file (make golden)
    python tests/golden/generate.py --check   # exit 1, naming each stale, missing or extra file

Each scenario of the registry (`builtin_scenarios()`) runs in process through the daemon's own
demo wiring (real NVML and Neuron sources on the simulated hardware), on a ManualClock at a fixed
epoch: POLLS polls INTERVAL seconds apart, then the exporter's own metrics are rendered (no
process_* collector). Every value is then exact:

- NVML scenarios run entirely on the injected clock.
- Neuron scenarios read a fake `neuron-monitor` subprocess that runs in real time. Its first line
  comes at once and describes scenario time 0; with the monitor period set to MONITOR_PERIOD no
  second line comes during a run, so the run waits (in real time) for that first line and then
  polls on the injected clock like an NVML scenario.

Only the exporter's version is replaced (`<version>`), so a release does not touch every file.
A new scenario is picked up by running this script; the check fails until its file exists.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from exporter import __version__  # noqa: E402
from exporter.clock import ManualClock  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.daemon import Daemon, Options, host_environment  # noqa: E402
from exporter.exposition.render import Renderer  # noqa: E402
from exporter.sim.scenario import builtin_scenarios  # noqa: E402
from exporter.sources.registry import HostEnvironment  # noqa: E402

GOLDEN = Path(__file__).resolve().parent
EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z
INTERVAL = 5.0
POLLS = 13  # one simulated minute after the first poll
NEURON_WAIT_SECONDS = 120.0  # the fake monitor's first line, on a loaded machine
SLURM_WAIT_SECONDS = 120.0  # the simulated scontrol's answers, on a loaded machine
MONITOR_PERIOD = 300.0  # the longest neuron.period: far longer than a run
REGENERATE = "python tests/golden/generate.py (or make golden)"


async def scrape(scenario: str) -> str:
    """The scenario's text exposition after POLLS polls on the injected clock."""
    clock = ManualClock(epoch=EPOCH)
    environment = host_environment(scenario)
    config = load_config(environment.default_config_file)  # the scenario's own, as --demo does
    config = replace(config, neuron=replace(config.neuron, period_seconds=MONITOR_PERIOD))
    daemon = Daemon(Options(demo=scenario, interval=INTERVAL), config, clock, environment)
    daemon._build_sources()
    daemon._start_idle_clock()
    daemon._start_slurm()
    daemon.provider = daemon._new_provider(daemon.config)
    daemon.ledger.record_config_reload(True, clock.time())
    try:
        await daemon._start_context()
        for source in daemon.sources:
            await source.start()
        if any(source.name == "neuron" for source in daemon.sources):
            await _first_monitor_line(daemon, scenario)
        await _answer_every_job(daemon, environment, scenario)
        for _ in range(POLLS):
            await daemon.poll_once()
            clock.advance(INTERVAL)
        snapshot = daemon.ledger.snapshot(clock.monotonic())
    finally:
        await daemon._shutdown_sources()
        environment.close()
    return Renderer(process_metrics=False).plain(snapshot, False).body.decode()


async def _first_monitor_line(daemon: Daemon, scenario: str) -> None:
    """Poll, without moving the injected clock, until the fake monitor's first line has been read."""
    deadline = time.monotonic() + NEURON_WAIT_SECONDS
    while not any(d.identity.kind == "neuroncore" for d in daemon.ledger.snapshot(0.0).devices):
        if time.monotonic() > deadline:
            raise SystemExit(f"{scenario}: no NeuronCore after {NEURON_WAIT_SECONDS:.0f} s")
        await asyncio.sleep(0.05)  # real time: the line is on its way
        await daemon.poll_once()


async def _answer_every_job(daemon: Daemon, environment: HostEnvironment, scenario: str) -> None:
    """Look up every job of a Slurm scenario before the first poll: the simulated scontrol answers
    in real time, which would otherwise decide which polls are charged to an account."""
    cluster = getattr(getattr(environment, "scenario", None), "slurm", None)
    if cluster is None or daemon._slurm is None:
        return
    job_ids = [str(job.job_id) for job in cluster.jobs]
    for job_id in job_ids:
        daemon._slurm.job(job_id)
    await daemon._slurm.settle(SLURM_WAIT_SECONDS)
    unanswered = [job_id for job_id in job_ids if daemon._slurm.job(job_id) is None]
    if unanswered:
        raise SystemExit(f"{scenario}: scontrol gave no answer for jobs {unanswered} in {SLURM_WAIT_SECONDS:.0f} s")


def render(scenario: str) -> str:
    """The golden text of one scenario."""
    text = asyncio.run(scrape(scenario)).replace(f'version="{__version__}"', 'version="<version>"')
    header = (
        f"# Golden /metrics of --demo {scenario}: generated by tests/golden/generate.py, do not edit.\n"
        f"# Regenerate: {REGENERATE}\n"
    )
    return header + text


def main(argv: list[str] | None = None) -> int:
    """Write or check every golden file; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    parser.add_argument(
        "--directory", type=Path, default=GOLDEN, help="where the golden files are (default: %(default)s)"
    )
    parser.add_argument("scenarios", nargs="*", help="only these scenarios (default: every built-in one)")
    args = parser.parse_args(argv)
    names = args.scenarios or builtin_scenarios()
    problems: list[str] = []
    for name in names:
        path = args.directory / f"{name}.prom"
        expected = render(name)
        if not args.check:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {_shown(path)}")
        elif not path.exists():
            problems.append(f"{_shown(path)} is missing (a new scenario)")
        elif path.read_text(encoding="utf-8") != expected:
            problems.append(f"{_shown(path)} is stale: /metrics of --demo {name} changed")
    if not args.scenarios:
        for path in sorted(args.directory.glob("*.prom")):
            if path.stem not in names:
                problems.append(f"{_shown(path)} has no scenario any more: delete it")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"review the change, then regenerate: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
