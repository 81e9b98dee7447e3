"""Team and workload attribution: config rules over process facts and instance tags.

Facts a rule can match (values are shell-style globs, all must match, first rule wins):

- `user`, `command`: from /proc (or the simulator);
- `cgroup`: the raw /proc/<pid>/cgroup text; `unit`, `container`, `pod`: parsed from it
  (systemd unit, 64-hex container ID, Kubernetes pod UID);
- `namespace`, `pod`: when a pod lookup is wired in (kubelet pod-resources / log directories),
  `pod` is the pod name and `namespace` its namespace; without it `pod` is the UID and
  `namespace` is "";
- `runtime_tag`: the Neuron runtime tag;
- `slurm_job_id`: from the cgroup (Slurm's job step cgroups); `slurm_account`,
  `slurm_partition`: from `scontrol show job <id> --json` when a Slurm lookup is wired in;
- `tag:<Key>`: an instance tag (IMDS tags, EC2 DescribeTags, or `host.tags` in config).

On a Slurm host a job's process that no rule matches is charged to the job's account (team) and
partition (workload), once scontrol has told them.

A rule's team and workload may name facts in braces, e.g. `workload: "{unit}"` or
`team: "{tag:Team}"`; the result is sanitised and length-bounded like every label value.

Bounds: rules see at most the first MATCH_PREFIX_CHARS (4096) characters of the command line and
of the cgroup text, so a 2 MB command line costs what a 4 kB one does. Rules are compiled once
per rule set (`compile_rules`, off the event loop at reload) into a `RuleIndex`, and each distinct
set of process facts is matched and labelled once per rule set: the owner is kept until
MEMO_ENTRIES distinct processes have been seen, then the memo starts over. A process's owner is a
function of its facts and the rule set alone (the pod and Slurm lookups are facts), so a process
whose facts did not change keeps its owner across polls without matching or sanitising again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace

from exporter.clock import Clock
from exporter.config.model import AttributionRule, AttributionSettings
from exporter.context.model import UNASSIGNED, Attributor, HostIdentity, Owner, PodFacts
from exporter.context.owner.cgroup import CgroupFacts, parse_cgroup
from exporter.context.owner.labels import sanitize_label
from exporter.context.owner.rule_index import RuleIndex
from exporter.context.owner.slurm import SlurmJob
from exporter.readings import COMMAND_PREFIX_CHARS, ProcessReading, SourceReport
from exporter.users import user_name

TAG_PREFIX = "tag:"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+(?::[^{}]+)?)\}")
MATCH_PREFIX_CHARS = COMMAND_PREFIX_CHARS
MEMO_ENTRIES = 4096


# Maps a process's cgroup facts to its pod; None when the pod is unknown. The daemon wires
# `lambda facts: watcher.assignments.for_cgroup(facts)` from the pod-resources watcher.
PodLookup = Callable[[CgroupFacts], "PodFacts | None"]
# Maps a Slurm job ID to what slurmctld says about it; None while unknown (see slurm.SlurmJobs.job).
JobLookup = Callable[[str], "SlurmJob | None"]


def _is_tag_rule(rule: AttributionRule) -> bool:
    return bool(rule.match) and all(key.startswith(TAG_PREFIX) for key, _ in rule.match)


def _render(template: str, facts: Mapping[str, str]) -> str:
    """Replace `{fact}` with the fact's value; unknown facts become ""."""
    if "{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: facts.get(m.group(1), ""), template)


Answer = tuple[str, str] | None  # (team, workload) of the first matching rule


class CompiledRules:
    """One rule set, indexed: process rules, tag-only (host) rules and the memo of answers."""

    def __init__(self, settings: AttributionSettings) -> None:
        self.settings = settings
        self.process_rules = RuleIndex([rule for rule in settings.rules if not _is_tag_rule(rule)])
        self.host_rules = RuleIndex([rule for rule in settings.rules if _is_tag_rule(rule)])
        self._memo: dict[tuple[tuple[str, str], ...], Answer] = {}
        self._owners: dict[tuple[tuple[str, str], ...], Owner] = {}

    def label(self, value: str) -> str:
        """`value` sanitised and bounded as a team, workload or owner label."""
        return sanitize_label(value, self.settings.max_label_length)

    def first_match(self, index: RuleIndex, facts: Mapping[str, str]) -> Answer:
        """(team, workload) of the first rule whose facts all match and whose team renders non-empty."""
        for rule in index.matching(facts):
            team = self.label(_render(rule.team, facts))
            # An empty team is a template over a missing fact, e.g. "{tag:Team}" on an untagged
            # host: the rules after it still get their turn.
            if team:
                return team, self.label(_render(rule.workload, facts))
        return None

    def process_answer(self, facts: Mapping[str, str]) -> Answer:
        """`first_match` over the process rules, remembered per distinct set of facts."""
        key = tuple(facts.items())
        try:
            return self._memo[key]
        except KeyError:
            pass
        answer = self.first_match(self.process_rules, facts)
        if len(self._memo) >= MEMO_ENTRIES:
            self._memo.clear()  # bounded: processes come and go, their facts with them
        self._memo[key] = answer
        return answer

    def process_owner(self, facts: Mapping[str, str], build: Callable[[Mapping[str, str]], Owner]) -> Owner:
        """`build(facts)`, remembered per distinct set of facts (the owner depends on nothing else)."""
        key = tuple(facts.items())
        owner = self._owners.get(key)
        if owner is None:
            owner = build(facts)
            if len(self._owners) >= MEMO_ENTRIES:
                self._owners.clear()  # bounded, like the answers
            self._owners[key] = owner
        return owner


_compiled_lock = threading.Lock()
_compiled: list[CompiledRules] = []  # the most recent rule sets, newest last


def compile_rules(settings: AttributionSettings) -> CompiledRules:
    """The compiled form of `settings`' rules; the same settings object gets the same compiled rules.

    Compiling 40,000 rules takes a while: the daemon calls this on a worker thread before a
    reload swaps the configuration in, so the event loop only finds it ready.
    """
    with _compiled_lock:
        for compiled in _compiled:
            if compiled.settings is settings:
                return compiled
    compiled = CompiledRules(settings)
    with _compiled_lock:
        _compiled.append(compiled)
        del _compiled[:-2]  # the rule set in force and the one a reload is preparing
    return compiled


class RuleAttributor:
    """Applies the configured rules in order; the first rule whose facts all match wins.

    Rules that match only `tag:` facts describe the instance, so they are used by `host_owner`
    and not by `process_owner` (otherwise they would swallow every process and hide the rules
    after them).
    """

    def __init__(
        self,
        settings: AttributionSettings,
        tags: tuple[tuple[str, str], ...] = (),
        pod_lookup: PodLookup | None = None,
        rules: CompiledRules | None = None,
        job_lookup: JobLookup | None = None,
    ) -> None:
        self._settings = settings
        self._tag_facts = {TAG_PREFIX + key: value for key, value in tags}
        self._pod_lookup = pod_lookup
        self._job_lookup = job_lookup
        self._rules = rules if rules is not None else compile_rules(settings)

    def _tags(self) -> tuple[tuple[str, str], ...]:
        return tuple((key[len(TAG_PREFIX) :], value) for key, value in self._tag_facts.items())

    def with_tags(self, tags: tuple[tuple[str, str], ...]) -> RuleAttributor:
        """The same rules and lookups over another instance's tags."""
        return RuleAttributor(self._settings, tags, self._pod_lookup, self._rules, self._job_lookup)

    def with_pod_lookup(self, pod_lookup: PodLookup | None) -> RuleAttributor:
        """The same rules, tags and job lookup with a pod lookup wired in."""
        return RuleAttributor(self._settings, self._tags(), pod_lookup, self._rules, self._job_lookup)

    def with_job_lookup(self, job_lookup: JobLookup | None) -> RuleAttributor:
        """The same rules, tags and pod lookup with a Slurm job lookup wired in."""
        return RuleAttributor(self._settings, self._tags(), self._pod_lookup, self._rules, job_lookup)

    def _label(self, value: str) -> str:
        return self._rules.label(value)

    def process_facts(self, process: ProcessReading) -> dict[str, str]:
        """Every fact a rule can match for this process (before sanitising)."""
        cgroup = parse_cgroup(process.cgroup)
        pod_ref = self._lookup(cgroup)
        facts = dict(self._tag_facts)
        job = self._job(cgroup.slurm_job_id)
        user = process.user
        if user in ("", "unknown") and cgroup.slurm_job_id:
            # /proc would not say (hidepid, another pid namespace): the job's owner is the user.
            user = (job.user if job is not None else "") or _uid_name(cgroup.slurm_uid) or user
        facts.update(
            {
                "user": user,
                "command": process.command[:MATCH_PREFIX_CHARS],
                "cgroup": process.cgroup[:MATCH_PREFIX_CHARS],
                "unit": cgroup.unit,
                "container": cgroup.container_id,
                "pod": pod_ref.pod if pod_ref is not None and pod_ref.pod else cgroup.pod_uid,
                "pod_uid": cgroup.pod_uid,
                "namespace": pod_ref.namespace if pod_ref is not None else "",
                "container_name": pod_ref.container if pod_ref is not None else "",
                "runtime_tag": process.runtime_tag,
            }
        )
        facts.update(_job_facts(cgroup.slurm_job_id, job))
        return facts

    def _job(self, job_id: str) -> SlurmJob | None:
        if self._job_lookup is None or not job_id:
            return None
        try:
            return self._job_lookup(job_id)
        except Exception:  # a lookup problem must not stop attribution
            return None

    def _lookup(self, cgroup: CgroupFacts) -> PodFacts | None:
        if self._pod_lookup is None or not (cgroup.pod_uid or cgroup.container_id):
            return None
        try:
            return self._pod_lookup(cgroup)
        except Exception:
            return None

    def process_owner(self, process: ProcessReading) -> Owner:
        """The owner of one process; team is '' when no rule matched."""
        return self._rules.process_owner(self.process_facts(process), self._owner_of)

    def _owner_of(self, facts: Mapping[str, str]) -> Owner:
        """The owner of a process with these facts: labels sanitised, the first matching rule's team."""
        container = facts["container_name"] or facts["container"][:12]
        base = Owner(
            team="",
            workload="",
            pod=self._label(facts["pod"]),
            namespace=self._label(facts["namespace"]),
            container=self._label(container),
            unit=self._label(facts["unit"]),
            slurm_job_id=self._label(facts["slurm_job_id"]),
        )
        match = self._rules.process_answer(facts) or self._account_default(facts)
        return base if match is None else replace(base, team=match[0], workload=match[1])

    def _account_default(self, facts: Mapping[str, str]) -> Answer:
        """A Slurm job's account as team and its partition as workload, when scontrol told them."""
        team = self._label(facts.get("slurm_account", ""))
        return (team, self._label(facts.get("slurm_partition", ""))) if team else None

    def job_owner(self, job_id: str) -> Owner:
        """The owner of a Slurm job that holds a device with no visible process (dcgm-exporter's job map).

        Rules see `slurm_job_id`, `slurm_account`, `slurm_partition` and `user` (the job's, from
        scontrol) and the instance tags; without a rule the account is the team. Team is '' when
        neither a rule nor the account says.
        """
        job = self._job(job_id)
        facts = dict(self._tag_facts)
        facts["user"] = job.user if job is not None else ""
        facts.update(_job_facts(job_id, job))
        base = Owner(team="", slurm_job_id=self._label(job_id))
        match = self._rules.first_match(self._rules.process_rules, facts) or self._account_default(facts)
        return base if match is None else replace(base, team=match[0], workload=match[1])

    def pod_owner(self, pod: PodFacts) -> Owner:
        """The owner of a pod that holds a device with no process on it (e.g. a GPU requested and idle).

        Rules see `namespace`, `pod` and `container_name` (and the instance tags); team is '' when
        no rule matched.
        """
        facts = dict(self._tag_facts)
        facts.update({"namespace": pod.namespace, "pod": pod.pod, "container_name": pod.container})
        base = Owner(
            pod=self._label(pod.pod),
            namespace=self._label(pod.namespace),
            container=self._label(pod.container),
            team="",
        )
        match = self._rules.first_match(self._rules.process_rules, facts)
        return base if match is None else replace(base, team=match[0], workload=match[1])

    def host_owner(self, identity: HostIdentity) -> Owner:
        """The instance's owner: a tag-only rule, else its team/workload tags, else the default, else `unassigned`."""
        tags = dict(identity.tags)
        facts = {TAG_PREFIX + key: value for key, value in identity.tags}
        settings = self._settings
        match = self._rules.first_match(self._rules.host_rules, facts)
        if match is not None:
            return Owner(team=match[0], workload=match[1])
        team = self._label(tags.get(settings.team_tag, "")) or self._label(settings.default_team) or UNASSIGNED
        workload = self._label(tags.get(settings.workload_tag, "")) or self._label(settings.default_workload)
        return Owner(team=team, workload=workload)


def _uid_name(uid: str) -> str:
    """The user name of a uid from a cgroup path ("" when there is none)."""
    return user_name(int(uid)) if uid.isdecimal() else ""


def _job_facts(job_id: str, job: SlurmJob | None) -> dict[str, str]:
    return {
        "slurm_job_id": job_id,
        "slurm_account": job.account if job is not None else "",
        "slurm_partition": job.partition if job is not None else "",
    }


def attribute_ahead(report: SourceReport, attributor: Attributor, clock: Clock) -> SourceReport:
    """Attribute every process in `report` now, and add the time it took to the report's duration.

    The daemon runs this on a worker thread before accounting ingests the report: the rules are
    matched there (long command lines, many rules) and the memo answers accounting's own calls on
    the event loop. The time is part of the collector's poll, so its duration metric shows it.
    """
    started = clock.monotonic()
    # Each distinct process once: a Neuron runtime is listed on every core it uses (1,024 entries of
    # 32 processes on a trn1n.32xlarge), and this thread holds the GIL the event loop needs.
    seen: set[ProcessReading] = set()
    for device in report.devices:
        for process in device.processes:
            if process not in seen:
                seen.add(process)
                attributor.process_owner(process)
    spent = max(0.0, clock.monotonic() - started)
    return replace(report, duration_seconds=report.duration_seconds + spent) if spent else report
