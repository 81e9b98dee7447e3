"""The ledger attributes each distinct process once per report, with the same result as per entry.

A Neuron runtime is listed on every core it uses, so one process appears on many devices of a
report; the rules are matched once for it. The label cap still counts every entry it replaces.
"""

from __future__ import annotations

from exporter.accounting.ledger import Ledger
from exporter.config.model import AccountingSettings, AttributionRule, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, Owner, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport

RULES = AttributionSettings(
    rules=(
        AttributionRule(match=(("user", "alice"),), team="vision", workload="train"),
        AttributionRule(match=(("user", "bob"),), team="speech"),
    )
)
PROCESSES = (
    ProcessReading(101, 2**30, user="alice", command="python train.py"),
    ProcessReading(202, 2**29, user="bob", command="python serve.py"),
    ProcessReading(303, None, user="carol", command="jupyter"),  # no rule: the host's team
)


class CountingAttributor(RuleAttributor):
    """The real rules, counting how often a process is attributed."""

    def __init__(self) -> None:
        super().__init__(RULES, (("Team", "platform"),))
        self.calls: list[int] = []

    def process_owner(self, process: ProcessReading) -> Owner:
        self.calls.append(process.pid)
        return super().process_owner(process)


def report(cores: int) -> SourceReport:
    devices = tuple(
        DeviceReading(
            DeviceIdentity(f"neuroncore{n}", f"nc-{n}", "aws", "Trainium", "neuroncore"),
            up=True,
            utilization=0.5,
            processes=PROCESSES,
        )
        for n in range(cores)
    )
    return SourceReport("neuron", devices, True, 0.01, 1000.0)


def context(attributor: RuleAttributor) -> HostContext:
    identity = HostIdentity(provider="aws", instance_type="trn1.32xlarge", tags=(("Team", "platform"),))
    return HostContext(identity, PriceQuote(21.5, "config"), attributor)


def test_each_process_is_attributed_once_per_report_and_owned_as_before() -> None:
    attributor = CountingAttributor()
    ledger = Ledger(AccountingSettings())
    for poll in range(2):
        ledger.ingest(report(cores=8), context(attributor), now=float(poll))
    # Once per distinct process per report, not once per (core, process) entry.
    assert sorted(attributor.calls) == [101, 101, 202, 202, 303, 303]
    snapshot = ledger.snapshot(2.0)
    assert len(snapshot.devices) == 8
    for device in snapshot.devices:
        owners = {p.pid: (p.owner.team, p.owner.workload) for p in device.processes}
        assert owners == {101: ("vision", "train"), 202: ("speech", ""), 303: ("platform", "")}
        assert (device.owner.team, device.owner.workload) == ("vision", "train")  # most memory


def test_the_label_cap_still_counts_every_entry_it_replaces() -> None:
    ledger = Ledger(AccountingSettings(), max_label_values=1)
    ledger.ingest(report(cores=4), context(RuleAttributor(RULES, (("Team", "platform"),))), now=0.0)
    snapshot = ledger.snapshot(0.0)
    teams = {p.pid: p.owner.team for d in snapshot.devices for p in d.processes}
    assert teams == {101: "vision", 202: "other", 303: "other"}
    # Two processes over the cap on each of 4 cores: 8 replaced team values, as without the memo.
    assert dict(snapshot.label_overflow)["team"] == 8.0


def test_an_unchanged_process_keeps_its_snapshot_across_reports_and_a_new_owner_shows_at_once() -> None:
    ledger = Ledger(AccountingSettings())
    attributor = RuleAttributor(RULES, (("Team", "platform"),))
    first, second = [], []
    for poll in range(2):
        ledger.ingest(report(cores=2), context(attributor), now=float(poll))
        (first if poll == 0 else second).extend(ledger.snapshot(float(poll)).devices[0].processes)
    # The renderer recognises unchanged processes by identity: the same objects, not equal copies.
    assert all(a is b for a, b in zip(first, second, strict=True))
    # Other rules (a reload): alice's owner changes, and the snapshot says so on this very report.
    reloaded = AttributionSettings(rules=(AttributionRule(match=(("user", "alice"),), team="nlp"),))
    ledger.ingest(report(cores=2), context(RuleAttributor(reloaded, (("Team", "platform"),))), now=2.0)
    teams = {p.pid: p.owner.team for p in ledger.snapshot(2.0).devices[0].processes}
    assert teams == {101: "nlp", 202: "platform", 303: "platform"}
