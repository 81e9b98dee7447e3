"""Attribution under hostile sizes: megabyte command lines and tens of thousands of rules.

Both run a real exporter subprocess on the simulator and probe `/-/healthy` over real HTTP while
the exporter polls (or reloads), so a rule match that blocks the event loop shows as a slow probe.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import signal
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from exporter.clock import ManualClock
from exporter.config.load import load_config, parse_config
from exporter.config.model import MAX_ATTRIBUTION_RULES, AttributionRule
from exporter.config.reader import ConfigInvalid
from exporter.context.model import HostIdentity, Owner, PodFacts
from exporter.context.owner.attribution import MATCH_PREFIX_CHARS, RuleAttributor, attribute_ahead
from exporter.context.owner.rule_index import RuleIndex
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport
from exporter.reload import prepare_config
from exporter.sim.scenario import padded_command, parse_scenario
from exporter.sources.procfs import COMMAND_PREFIX_CHARS, ProcFs

EIGHT_GPUS_LONG_COMMANDS = "\n".join(
    [
        "name: long-command-lines",
        "host: {provider: aws, instance_type: p4d.24xlarge, region: us-east-1, lifecycle: on-demand}",
        "gpus:",
        *(f"  - {{index: {i}, model: NVIDIA A100-SXM4-40GB, memory_total: 40GiB, utilization: 0.5}}" for i in range(8)),
        "processes:",
        *(
            f'  - {{pid: {5000 + i}, device: "{i}", memory: 20GiB, user: svc-{i}, '
            f'command: "python serve.py --model m{i}", command_bytes: 2MiB}}'
            for i in range(8)
        ),
    ]
)

# Four globs that fail (each scans the whole value) before the one that matches.
FIVE_GLOB_RULES = """
attribution:
  rules:
    - {match: {command: "*trainer.py*"}, team: training}
    - {match: {command: "*eval.py*"}, team: evaluation}
    - {match: {command: "*notebook*"}, team: research}
    - {match: {command: "*batch.py*"}, team: batch}
    - {match: {command: "*serve.py*"}, team: serving, workload: "{user}"}
"""


PROBE_PERIOD = 0.01


def probe_healthy(port: int, until: Callable[[], bool], deadline: float = 60.0) -> list[float]:
    """Latency of `/-/healthy` probes sent every PROBE_PERIOD seconds (fresh connection each), until `until()`.

    Each latency counts from the moment the probe was due, not from when it was sent: a loop
    blocked for a second delays every probe due in that second, as it would delay real probers.
    """
    timings: list[float] = []
    started = time.monotonic()
    stop = started + deadline
    while time.monotonic() < stop:
        due = started + len(timings) * PROBE_PERIOD
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing the probes, not waiting for the exporter
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/-/healthy")
        response = connection.getresponse()
        response.read()
        connection.close()
        timings.append(time.monotonic() - due)
        assert response.status == 200
        if len(timings) % 20 == 0 and until():
            return timings
    pytest.fail(f"condition not reached in {deadline}s ({len(timings)} probes)")


def percentile(timings: list[float], share: float) -> float:
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


# On a shared 2-core machine an unrelated CPU hog alone puts an idle exporter's p99 at 160-340 ms,
# so the tests hold the median to the bound and the p99 to a generous one (before the
# fixes: median 420 ms and p99 1.2 s with long command lines, a 11-55 s stall on reload). The
# p99 figures on a quieter host are in docs/reliability.md.
P99_BOUND = 1.0


def summary(timings: list[float]) -> str:
    return (
        f"{len(timings)} probes, median {percentile(timings, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(timings, 0.99) * 1000:.1f} ms, max {max(timings) * 1000:.1f} ms"
    )


def sample(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_two_megabyte_command_lines_keep_health_probes_fast(tmp_path: Path, run_exporter: Any) -> None:
    scenario = tmp_path / "long.yaml"
    scenario.write_text(EIGHT_GPUS_LONG_COMMANDS)
    config = tmp_path / "config.yaml"
    config.write_text(FIVE_GLOB_RULES)
    exporter = run_exporter(["--demo", str(scenario), "--config.file", str(config), "--collector.interval", "0.5s"])
    series = 'accel_state_seconds_total{device="nvidia0",state="active"}'
    start = sample(exporter.metrics(), series) or 0.0

    timings = probe_healthy(exporter.port, lambda: (sample(exporter.metrics(), series) or 0.0) >= start + 3.0)

    print(summary(timings))
    assert percentile(timings, 0.5) < 0.020, summary(timings)
    assert percentile(timings, 0.99) < P99_BOUND, summary(timings)
    text = exporter.metrics()
    for i in range(8):
        # The rule matched on the command line's prefix; the label carries a bounded command.
        assert f'accel_cost_dollars_total{{device="nvidia{i}",team="serving",workload="svc-{i}"}}' in text
    duration = sample(text, 'accel_exporter_collector_duration_seconds{collector="nvml"}')
    assert duration is not None and 0.0 < duration < 0.5, duration
    info = next(line for line in text.splitlines() if line.startswith("accel_process_info{"))
    assert len(info) < 1000, info[:200]


def reading(*processes: ProcessReading) -> SourceReport:
    device = DeviceReading(DeviceIdentity("nvidia0", "GPU-0", "nvidia", "A100", "gpu"), up=True, processes=processes)
    return SourceReport("nvml", (device,), True, 0.25, 0.0)


class SlowAttributor:
    """Matching that takes 2 s of (injected) clock time per process."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls = 0

    def process_owner(self, process: ProcessReading) -> Owner:
        self.calls += 1
        self.clock.advance(2.0)
        return Owner(team="t")

    def pod_owner(self, pod: PodFacts) -> Owner:
        return Owner(team="")

    def job_owner(self, job_id: str) -> Owner:
        return Owner(team="")

    def host_owner(self, identity: HostIdentity) -> Owner:
        return Owner()


def test_attribution_time_counts_in_the_poll_duration() -> None:
    clock = ManualClock()
    slow = SlowAttributor(clock)
    polled = reading(ProcessReading(1, 10), ProcessReading(2, 20))
    report = attribute_ahead(polled, slow, clock)
    assert slow.calls == 2
    assert report.duration_seconds == pytest.approx(0.25 + 4.0)
    assert report.devices == polled.devices


def test_rules_see_a_bounded_prefix_of_the_command_line() -> None:
    config = parse_config(
        {
            "attribution": {
                "rules": [
                    {"match": {"command": "*--secret-tail*"}, "team": "tail"},
                    {"match": {"command": "python serve.py*"}, "team": "serving"},
                ]
            }
        }
    )
    command = padded_command("python serve.py", 2 * 2**20) + " --secret-tail"
    owner = RuleAttributor(config.attribution).process_owner(ProcessReading(7, 1, "svc", command))
    # The tail lies beyond the documented prefix: only the second rule can match.
    assert owner.team == "serving"
    assert len(padded_command("python serve.py", 2 * 2**20)) > MATCH_PREFIX_CHARS


def test_a_process_is_matched_once_per_rule_set() -> None:
    config = parse_config({"attribution": {"rules": [{"match": {"command": "*serve.py*"}, "team": "serving"}]}})
    attributor = RuleAttributor(config.attribution)
    process = ProcessReading(7, 1, "svc", "python serve.py")
    calls = 0
    original = attributor._rules.first_match

    def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(*args)

    attributor._rules.first_match = counting  # type: ignore[method-assign]
    for _ in range(5):
        assert attributor.process_owner(process).team == "serving"
    assert calls == 1
    # Another instance's tags are other facts: matched again, not answered from the memo.
    assert attributor.with_tags((("Env", "prod"),)).process_owner(process).team == "serving"
    assert calls == 2


def many_rules(count: int) -> str:
    lines = ["attribution:", "  rules:"]
    lines += [f'    - {{match: {{user: "user-{i}"}}, team: "team-{i % 100}"}}' for i in range(count - 1)]
    lines.append('    - {match: {command: "*serve.py*"}, team: serving}')
    return "\n".join(lines) + "\n"


def test_a_reload_of_forty_thousand_rules_keeps_health_probes_fast(tmp_path: Path, run_exporter: Any) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("attribution:\n  rules:\n    - {match: {user: nobody}, team: none}\n")
    exporter = run_exporter(["--demo", "p4d-idle-fleet", "--config.file", str(config), "--collector.interval", "0.5s"])
    config.write_text(many_rules(40_000))
    exporter.signal(signal.SIGHUP)

    timings = probe_healthy(exporter.port, lambda: "configuration reloaded" in exporter.log(), deadline=300.0)

    print(summary(timings))
    assert len(timings) >= 20, summary(timings)
    assert percentile(timings, 0.5) < 0.050, summary(timings)
    assert percentile(timings, 0.99) < P99_BOUND, summary(timings)
    # The new rules are in force: svc-recsys matches none of the 39,999 literal rules, the glob after them.
    probe_healthy(exporter.port, lambda: 'device="nvidia3",team="serving"' in exporter.metrics())
    assert "Traceback" not in exporter.log()


def test_more_rules_than_the_bound_is_a_config_error() -> None:
    rules = [{"match": {"user": f"u{i}"}, "team": "t"} for i in range(MAX_ATTRIBUTION_RULES + 1)]
    with pytest.raises(ConfigInvalid) as caught:
        parse_config({"attribution": {"rules": rules}})
    message = str(caught.value)
    assert "attribution.rules" in message and f"at most {MAX_ATTRIBUTION_RULES}" in message, message
    assert len(message) < 400  # one line, not one per rule
    assert len(parse_config({"attribution": {"rules": rules[:-1]}}).attribution.rules) == MAX_ATTRIBUTION_RULES


def test_literal_rules_add_no_candidates() -> None:
    rules = [AttributionRule((("user", f"user-{i}"),), "t") for i in range(40_000)]
    rules.append(AttributionRule((("command", "*serve.py*"),), "serving"))
    index = RuleIndex(rules)
    assert index.candidates({"user": "user-123", "command": "python serve.py"}) == [123, 40_000]
    assert index.candidates({"user": "root", "command": "bash"}) == [40_000]


def naive_first(rules: list[AttributionRule], facts: dict[str, str]) -> AttributionRule | None:
    for rule in rules:
        if all(fnmatchcase(facts.get(key, ""), pattern) for key, pattern in rule.match):
            return rule
    return None


def test_the_index_picks_the_same_rule_as_a_plain_first_match() -> None:
    rng = random.Random(13)
    values = {"user": ["alice", "bob", "svc-a", "svc-b", ""], "command": ["python serve.py", "python train.py", "bash"]}
    patterns = {
        "user": ["alice", "bob", "svc-*", "*a*", "?ob", "[ab]*", ""],
        "command": ["python *", "*serve*", "bash", "*.py", "python train.py", "*"],
    }
    for _ in range(200):
        rules = []
        for position in range(rng.randint(1, 12)):
            keys = rng.sample(sorted(patterns), rng.randint(1, 2))
            rules.append(AttributionRule(tuple(sorted((k, rng.choice(patterns[k])) for k in keys)), f"t{position}"))
        index = RuleIndex(rules)
        for user in values["user"]:
            for command in values["command"]:
                facts = {"user": user, "command": command}
                assert next(index.matching(facts), None) == naive_first(rules, facts), (rules, facts)


def test_a_reload_parses_in_a_child_with_the_same_result_and_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(many_rules(1_234) + "accounting:\n  max_pairs_per_device: 7\n")
    prepared = asyncio.run(prepare_config(str(config)))
    assert prepared == load_config(str(config))
    assert len(prepared.attribution.rules) == 1_234  # three chunks, put back in order

    config.write_text("accounting:\n  idle_threshold: 7\nattribution:\n  rules: [{match: {}, team: x}]\n")
    with pytest.raises(ConfigInvalid) as caught:
        asyncio.run(prepare_config(str(config)))
    with pytest.raises(ConfigInvalid) as expected:
        load_config(str(config))
    assert caught.value.errors == expected.value.errors and len(caught.value.errors) == 2
    assert caught.value.source == str(config)


def test_without_a_parser_process_the_reload_parses_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(many_rules(10))
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-python"))
    assert asyncio.run(prepare_config(str(config))) == load_config(str(config))
    assert "parsing in a thread" in caplog.text


def test_a_parse_that_takes_too_long_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(many_rules(10))
    monkeypatch.setattr("exporter.reload.PARSE_TIMEOUT_SECONDS", 0.001)  # the child cannot even start in time
    with pytest.raises(ConfigInvalid) as caught:
        asyncio.run(prepare_config(str(config)))
    assert "parsing took longer than" in str(caught.value)


def test_a_simulated_command_line_is_padded_and_bounded() -> None:
    def process(size: str) -> dict[str, Any]:
        return {"gpus": [{"index": 0}], "processes": [{"pid": 1, "command": "python serve.py", "command_bytes": size}]}

    scenario = parse_scenario(process("2MiB"), "test")
    command = scenario.processes[0].command
    assert len(command) == 2 * 2**20 and command.startswith("python serve.py --shard=")
    with pytest.raises(ConfigInvalid) as caught:
        parse_scenario(process("1GiB"), "test")
    assert "processes[0].command_bytes" in str(caught.value) and "at most 64MiB" in str(caught.value)


def test_procfs_reads_only_the_command_prefix(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    pid = tmp_path / "4242"
    pid.mkdir()
    (pid / "stat").write_text("4242 (python) S " + " ".join(["0"] * 17) + " 100 0 0\n")
    (pid / "status").write_text("Name:\tpython\nUid:\t0\t0\t0\t0\n")
    (pid / "cmdline").write_bytes(b"python\x00serve.py\x00" + b"--shard=abcdef\x00" * 150_000)  # 2.2 MB
    facts = ProcFs(str(tmp_path)).facts(4242)
    assert facts is not None
    assert facts.command.startswith("python serve.py --shard=abcdef --shard=")
    assert len(facts.command) <= COMMAND_PREFIX_CHARS
