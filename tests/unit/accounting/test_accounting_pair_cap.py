"""The (team, workload) pair cap per device: bounded series, counted overflow, exact totals, expiry."""

from __future__ import annotations

import random

import pytest

from exporter.accounting.ledger import Ledger
from exporter.accounting.pair_cap import OTHER_PAIR
from exporter.accounting.snapshot import Snapshot
from exporter.config.load import parse_config
from exporter.config.model import AccountingSettings, AttributionSettings
from exporter.context.model import HostContext, HostIdentity, PriceQuote
from exporter.context.owner.attribution import RuleAttributor
from exporter.exposition.collector import build_families
from exporter.readings import DeviceIdentity, DeviceReading, ProcessReading, SourceReport

DEVICES = 8
PRICE_PER_DEVICE = 4.0  # 32 $/h over 8 GPUs
TEMPLATES = parse_config(
    {"attribution": {"rules": [{"match": {"command": "*"}, "team": "{user}", "workload": "{command}"}]}}
).attribution


def context(attribution: AttributionSettings) -> HostContext:
    identity = HostIdentity(provider="aws", instance_type="p4d.24xlarge", source="demo")
    return HostContext(identity, PriceQuote(PRICE_PER_DEVICE * DEVICES, "config"), RuleAttributor(attribution))


def report(now: float, holders: list[tuple[str, str]], utilization: float = 0.5) -> SourceReport:
    devices = tuple(
        DeviceReading(
            DeviceIdentity(f"nvidia{i}", f"GPU-{i}", "nvidia", "A100", "gpu"),
            up=True,
            utilization=utilization,
            processes=(ProcessReading(1000 + i, 2**30, user, command),),
        )
        for i, (user, command) in enumerate(holders)
    )
    return SourceReport("nvml", devices, True, 0.0, now)


def cost_by_pair(snapshot: Snapshot, device: str) -> dict[tuple[str, str], float]:
    return dict(next(d for d in snapshot.devices if d.identity.device == device).cost)


def test_a_hundred_users_by_a_hundred_commands_stay_under_the_cap_with_exact_totals() -> None:
    settings = AccountingSettings(max_pairs_per_device=20)
    ledger = Ledger(settings, max_label_values=100)
    host = context(TEMPLATES)
    rng = random.Random(7)
    rate = PRICE_PER_DEVICE / 3600.0
    kept: list[set[tuple[str, str]]] = [set() for _ in range(DEVICES)]
    expected: list[dict[tuple[str, str], float]] = [{} for _ in range(DEVICES)]
    polls = 1500
    for poll in range(polls):
        holders = [(f"user{rng.randrange(100)}", f"cmd{rng.randrange(100)}") for _ in range(DEVICES)]
        ledger.ingest(report(float(poll), holders), host, float(poll))
        for i, pair in enumerate(holders):
            # By hand: the first 20 distinct pairs charged keep their own counters, the rest is `other`.
            # The first poll charges no interval yet but opens its owner's counters at 0.
            if pair in kept[i] or len(kept[i]) < 20:
                kept[i].add(pair)
            else:
                pair = OTHER_PAIR
            expected[i][pair] = expected[i].get(pair, 0.0) + (rate if poll else 0.0)

    snapshot = ledger.snapshot(float(polls))
    for i in range(DEVICES):
        cost = cost_by_pair(snapshot, f"nvidia{i}")
        assert len(cost) <= 21
        assert cost.keys() == expected[i].keys()
        for pair, dollars in expected[i].items():
            assert cost[pair] == pytest.approx(dollars, rel=1e-9), pair
        assert sum(cost.values()) == pytest.approx(rate * (polls - 1), rel=1e-9)
    families = {family.name: family for family in build_families(snapshot)}
    series = len(families["accel_cost_dollars"].samples)
    waste_series = len(families["accel_waste_dollars"].samples)
    assert series <= DEVICES * 21 and waste_series <= DEVICES * 21, (series, waste_series)
    overflow = dict(snapshot.label_overflow)
    assert overflow["pair"] > 0
    assert "team" not in overflow and "workload" not in overflow  # 100 values each: the label cap admits all


def test_an_inactive_pair_folds_into_other_and_totals_stay_exact() -> None:
    settings = AccountingSettings(max_pairs_per_device=20, pair_expiry_seconds=60.0)
    ledger = Ledger(settings)
    host = context(TEMPLATES)
    rate = PRICE_PER_DEVICE / 3600.0
    idle = [("alice", "train.py")] * DEVICES
    busy = [("bob", "serve.py")] * DEVICES
    for second in range(11):  # alice holds every GPU, idle, for 10 charged seconds
        ledger.ingest(report(float(second), idle, utilization=0.0), host, float(second))
    snapshot = ledger.snapshot(10.0)
    assert cost_by_pair(snapshot, "nvidia0") == {("alice", "train.py"): pytest.approx(10 * rate)}
    for second in range(11, 11 + 60):  # bob for 60 s: alice's last charge is exactly 60 s old
        ledger.ingest(report(float(second), busy), host, float(second))
    assert ("alice", "train.py") in cost_by_pair(ledger.snapshot(70.0), "nvidia0")
    ledger.ingest(report(71.0, busy), host, 71.0)  # 61 s: past the expiry

    snapshot = ledger.snapshot(71.0)
    device = snapshot.devices[0]
    assert dict(device.cost) == {
        OTHER_PAIR: pytest.approx(10 * rate, rel=1e-9),
        ("bob", "serve.py"): pytest.approx(61 * rate, rel=1e-9),
    }
    assert dict(device.idle_cost) == {(*OTHER_PAIR, "idle_held"): pytest.approx(10 * rate, rel=1e-9)}
    assert sum(dict(device.waste).values()) == pytest.approx(10 * rate + 61 * rate * (0.8 - 0.5) / 0.8, rel=1e-9)
    assert "pair" not in dict(snapshot.label_overflow)  # expiry is not overflow


def test_pair_bounds_are_configurable_and_validated() -> None:
    config = parse_config({"accounting": {"max_pairs_per_device": 5, "pair_expiry": "2h"}})
    assert config.accounting.max_pairs_per_device == 5
    assert config.accounting.pair_expiry_seconds == 7200.0
    with pytest.raises(Exception) as caught:
        parse_config({"accounting": {"max_pairs_per_device": 0, "pair_expiry": "1s"}})
    message = str(caught.value)
    assert "accounting.max_pairs_per_device" in message and "accounting.pair_expiry" in message, message
