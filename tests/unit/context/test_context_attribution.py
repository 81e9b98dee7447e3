"""Team/workload attribution rules, label sanitising and the built-in price table."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ConfigInvalid, parse_config
from exporter.context.model import UNASSIGNED, HostIdentity, Owner
from exporter.context.owner.attribution import RuleAttributor
from exporter.context.owner.cgroup import CgroupFacts
from exporter.context.owner.kubernetes import PodRef
from exporter.context.owner.labels import sanitize_label
from exporter.context.price.builtin_prices import builtin_table
from exporter.readings import ProcessReading

POD_UID = "3f2a1b4c-5d6e-4f70-8192-a3b4c5d6e7f8"
CONTAINER = "a" * 64
K8S_CGROUP = (
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f2a1b4c_5d6e_4f70_8192_a3b4c5d6e7f8.slice/"
    f"cri-containerd-{CONTAINER}.scope"
)

RULES = {
    "attribution": {
        "default_team": "platform",
        "rules": [
            {"match": {"user": "alice"}, "team": "research", "workload": "llm-finetune"},
            {"match": {"unit": "recsys-*.service"}, "team": "recsys", "workload": "{unit}"},
            {"match": {"namespace": "vision-*"}, "team": "vision", "workload": "{pod}"},
            {"match": {"pod_uid": POD_UID}, "team": "by-pod-uid"},
            {"match": {"runtime_tag": "bert-*"}, "team": "nlp", "workload": "{runtime_tag}"},
            {"match": {"container": "b*"}, "team": "containers"},
            {"match": {"user": "svc-*", "command": "*serve*"}, "team": "serving"},
            {"match": {"tag:Project": "ads-*"}, "team": "ads", "workload": "{tag:Project}"},
        ],
    }
}


def attributor(tags: tuple[tuple[str, str], ...] = (), lookup=None) -> RuleAttributor:  # type: ignore[no-untyped-def]
    return RuleAttributor(parse_config(RULES).attribution, tags, lookup)


def proc(**kwargs: object) -> ProcessReading:
    return ProcessReading(pid=4242, used_memory_bytes=1 << 30, **kwargs)  # type: ignore[arg-type]


def test_rules_in_order_over_every_fact() -> None:
    a = attributor()
    assert (a.process_owner(proc(user="alice")).team, a.process_owner(proc(user="alice")).workload) == (
        "research",
        "llm-finetune",
    )
    recsys = a.process_owner(proc(user="svc-recsys", cgroup="0::/system.slice/recsys-serving.service"))
    assert (recsys.team, recsys.workload, recsys.unit) == ("recsys", "recsys-serving.service", "recsys-serving.service")
    neuron = a.process_owner(proc(user="bob", runtime_tag="bert-large-7"))
    assert (neuron.team, neuron.workload) == ("nlp", "bert-large-7")
    served = a.process_owner(proc(user="svc-x", command="python serve.py"))
    assert served.team == "serving"
    assert a.process_owner(proc(user="svc-x", command="python train.py")).team == ""  # no rule: accounting decides
    docker = a.process_owner(proc(user="root", cgroup="0::/system.slice/docker-" + "b" * 64 + ".scope"))
    assert (docker.team, docker.container) == ("containers", "b" * 12)


def test_first_match_wins() -> None:
    owner = attributor().process_owner(proc(user="alice", cgroup="0::/system.slice/recsys-serving.service"))
    assert owner.team == "research"


def test_pod_uid_from_the_cgroup_without_a_pod_lookup() -> None:
    owner = attributor().process_owner(proc(user="root", cgroup=K8S_CGROUP))
    assert owner.team == "by-pod-uid"
    assert owner.pod == POD_UID
    assert owner.namespace == ""
    assert owner.container == CONTAINER[:12]


@dataclass(frozen=True)
class FakePod:
    namespace: str
    pod: str
    container: str


def test_pod_lookup_hook_gives_namespace_and_pod_names() -> None:
    seen: list[CgroupFacts] = []

    def lookup(facts: CgroupFacts) -> FakePod | None:
        seen.append(facts)
        return FakePod("vision-prod", "detector-7d9f", "trainer") if facts.pod_uid == POD_UID else None

    owner = attributor(lookup=lookup).process_owner(proc(user="root", cgroup=K8S_CGROUP))
    assert (owner.team, owner.workload) == ("vision", "detector-7d9f")
    assert (owner.namespace, owner.pod, owner.container) == ("vision-prod", "detector-7d9f", "trainer")
    assert seen == [CgroupFacts(pod_uid=POD_UID, container_id=CONTAINER, unit="")]


def test_a_failing_pod_lookup_does_not_break_attribution() -> None:
    def lookup(facts: CgroupFacts) -> FakePod | None:
        raise RuntimeError("kubelet went away")

    assert attributor(lookup=lookup).process_owner(proc(user="root", cgroup=K8S_CGROUP)).team == "by-pod-uid"


def test_host_owner_tag_rule_then_tags_then_default_then_unassigned() -> None:
    a = attributor()
    by_rule = a.host_owner(HostIdentity(tags=(("Project", "ads-ranking"), ("Team", "other"))))
    assert (by_rule.team, by_rule.workload) == ("ads", "ads-ranking")
    by_tag = a.host_owner(HostIdentity(tags=(("Team", "ml-platform"), ("Workload", "shared-pool"))))
    assert (by_tag.team, by_tag.workload) == ("ml-platform", "shared-pool")
    assert a.host_owner(HostIdentity()).team == "platform"
    bare = RuleAttributor(parse_config({}).attribution)
    assert bare.host_owner(HostIdentity()).team == UNASSIGNED


def test_configurable_tag_keys() -> None:
    config = parse_config({"attribution": {"tag_keys": {"team": "cost-center", "workload": "app"}}})
    owner = RuleAttributor(config.attribution).host_owner(HostIdentity(tags=(("cost-center", "cc-42"), ("app", "x"))))
    assert (owner.team, owner.workload) == ("cc-42", "x")


def test_tag_only_rules_do_not_swallow_processes() -> None:
    a = attributor(tags=(("Project", "ads-ranking"),))
    assert a.process_owner(proc(user="nobody")).team == ""


def test_template_over_a_missing_fact_falls_through() -> None:
    config = parse_config(
        {
            "attribution": {
                "rules": [{"match": {"user": "*"}, "team": "{tag:Team}"}, {"match": {"user": "*"}, "team": "fallback"}]
            }
        }
    )
    assert RuleAttributor(config.attribution).process_owner(proc(user="x")).team == "fallback"
    tagged = RuleAttributor(config.attribution, (("Team", "search"),))
    assert tagged.process_owner(proc(user="x")).team == "search"


def test_process_pod_and_host_owners_share_one_rule_walk() -> None:
    # The same rules decide for a process, an idle pod and the host: first full match with a
    # non-empty rendered team wins, its workload and the facts' labels are kept.
    config = parse_config(
        {
            "attribution": {
                "rules": [
                    {"match": {"namespace": "ml"}, "team": "{tag:Team}", "workload": "skipped"},
                    {"match": {"namespace": "ml"}, "team": "ml-{container_name}", "workload": "{pod}"},
                    {"match": {"tag:Env": "prod"}, "team": "{tag:Owner}", "workload": "skipped"},
                    {"match": {"tag:Env": "prod"}, "team": "prod-ops", "workload": "{tag:Env}"},
                ]
            }
        }
    )
    a = RuleAttributor(config.attribution, (("Env", "prod"),), lambda facts: PodRef("ml", "bert-0", "worker"))
    process = a.process_owner(proc(user="root", cgroup=K8S_CGROUP))
    assert process == Owner("ml-worker", "bert-0", "bert-0", "ml", "worker", "")
    assert a.pod_owner(PodRef("ml", "bert-0", "worker")) == Owner("ml-worker", "bert-0", "bert-0", "ml", "worker")
    assert a.pod_owner(PodRef("other", "x", "c")) == Owner("", "", "x", "other", "c")
    assert a.host_owner(HostIdentity(tags=(("Env", "prod"),))) == Owner("prod-ops", "prod")


def test_bad_rules_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config({"attribution": {"rules": [{"match": {"uid": "0"}, "team": "root"}, {"match": {}, "team": ""}]}})
    text = str(info.value)
    assert "attribution.rules[0].match.uid" in text and "unknown fact" in text
    assert "attribution.rules[1].team" in text


NASTY = [
    'team "quoted" \\ back',
    "line1\nline2\r\nline3",
    "tab\there\x00nul\x1b[31mred",
    "zero\u200bwidth\u202eRTL",
    "emoji 🚀 ünïcödé 日本語",
    "x" * 10_000,
    "\ud800 lone surrogate",
    "   ",
    "e\u0301",  # e + combining acute: NFC makes it one character
]


@pytest.mark.parametrize("value", NASTY)
def test_sanitize_label_bounds_nasty_values(value: str) -> None:
    out = sanitize_label(value, 64)
    assert len(out) <= 64
    assert not any(unicodedata.category(ch).startswith("C") for ch in out)
    assert out == out.strip()
    assert "  " not in out
    out.encode("utf-8")  # no lone surrogates left


def test_sanitize_label_examples() -> None:
    assert sanitize_label('team "quoted" \\ back') == 'team "quoted" \\ back'  # the exposition escapes these
    assert sanitize_label("line1\nline2") == "line1 line2"
    assert sanitize_label("e\u0301") == "\u00e9"
    long = sanitize_label("x" * 10_000, 64)
    assert long == "x" * 63 + "…"
    assert sanitize_label("ab" + " " * 1000 + "cd", 16) == "ab…"  # content past the scanned prefix was cut
    assert sanitize_label("", 16) == ""


def test_nasty_tags_stay_bounded_through_attribution() -> None:
    tags = (("Team", "evil\nteam" + "z" * 10_000), ("Workload", 'w"\x00'))
    owner = RuleAttributor(parse_config({}).attribution).host_owner(HostIdentity(tags=tags))
    assert len(owner.team) <= 64 and "\n" not in owner.team
    assert owner.workload == 'w"'


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=2, max_value=200))
def test_sanitize_label_properties(value: str, limit: int) -> None:
    out = sanitize_label(value, limit)
    assert len(out) <= limit
    assert not any(unicodedata.category(ch).startswith("C") for ch in out)
    assert sanitize_label(out, limit) == out  # idempotent: a sanitised value is left alone


# --- the built-in table ------------------------------------------------------------------------------

# us-east-1 Linux on-demand, Karpenter's table generated 2026-07-20 (reference §7).
EXPECTED = {
    "p4d.24xlarge": 21.957642,
    "p4de.24xlarge": 27.44705,
    "p5.4xlarge": 6.88,
    "p5.48xlarge": 55.04,
    "p5en.48xlarge": 63.296,
    "p6-b200.48xlarge": 113.9328,
    "p6-b300.48xlarge": 142.416,
    "g5.12xlarge": 5.672,
    "g6.24xlarge": 6.6752,
    "g6e.12xlarge": 10.49264,
    "g4dn.metal": 7.824,
    "inf1.24xlarge": 4.721,
    "inf2.48xlarge": 12.98127,
    "trn1.32xlarge": 21.5,
    "trn1n.32xlarge": 24.78,
}


def test_builtin_table_is_dated_and_current() -> None:
    table = builtin_table()
    assert (table.as_of, table.region) == ("2026-07-20", "us-east-1")
    for instance_type, price in EXPECTED.items():
        assert table.prices[instance_type] == pytest.approx(price), instance_type
    assert "p5e.48xlarge" not in table.prices  # Capacity Blocks only: no on-demand price
    assert "trn2.48xlarge" not in table.prices  # not in the us-east-1 table: configuration, not a constant
    assert all(price > 0 for price in table.prices.values())
    assert set(table.prices) == set(table.accelerators)
    assert table.accelerators["trn1.32xlarge"] == 32  # NeuronCores, the devices the exporter prices
    assert set(table.shapes) <= set(table.prices)
