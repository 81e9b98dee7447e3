"""Team and workload attribution: config rules over process facts and instance tags.

Facts a rule can match (values are shell-style globs, all must match, first rule wins):

- `user`, `command`: from /proc (or the simulator);
- `cgroup`: the raw /proc/<pid>/cgroup text; `unit`, `container`, `pod`: parsed from it
  (systemd unit, 64-hex container ID, Kubernetes pod UID);
- `namespace`, `pod`: when a pod lookup is wired in (kubelet pod-resources / log directories),
  `pod` is the pod name and `namespace` its namespace; without it `pod` is the UID and
  `namespace` is "";
- `runtime_tag`: the Neuron runtime tag;
- `tag:<Key>`: an instance tag (IMDS tags, EC2 DescribeTags, or `host.tags` in config).

A rule's team and workload may name facts in braces, e.g. `workload: "{unit}"` or
`team: "{tag:Team}"`; the result is sanitised and length-bounded like every label value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from fnmatch import fnmatchcase

from exporter.config.model import AttributionRule, AttributionSettings
from exporter.context.cgroup import CgroupFacts, parse_cgroup
from exporter.context.labels import sanitize_label
from exporter.context.model import UNASSIGNED, HostIdentity, Owner, PodFacts
from exporter.readings import ProcessReading

TAG_PREFIX = "tag:"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+(?::[^{}]+)?)\}")


# Maps a process's cgroup facts to its pod; None when the pod is unknown. The daemon wires
# `lambda facts: watcher.assignments.for_cgroup(facts)` from the pod-resources watcher.
PodLookup = Callable[[CgroupFacts], "PodFacts | None"]


def _is_tag_rule(rule: AttributionRule) -> bool:
    return bool(rule.match) and all(key.startswith(TAG_PREFIX) for key, _ in rule.match)


def _matches(rule: AttributionRule, facts: Mapping[str, str]) -> bool:
    return all(fnmatchcase(facts.get(key, ""), pattern) for key, pattern in rule.match)


def _render(template: str, facts: Mapping[str, str]) -> str:
    """Replace `{fact}` with the fact's value; unknown facts become ""."""
    if "{" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: facts.get(m.group(1), ""), template)


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
    ) -> None:
        self._settings = settings
        self._tag_facts = {TAG_PREFIX + key: value for key, value in tags}
        self._pod_lookup = pod_lookup
        self._process_rules = tuple(rule for rule in settings.rules if not _is_tag_rule(rule))
        self._host_rules = tuple(rule for rule in settings.rules if _is_tag_rule(rule))

    def with_tags(self, tags: tuple[tuple[str, str], ...]) -> RuleAttributor:
        """The same rules and pod lookup over another instance's tags."""
        return RuleAttributor(self._settings, tags, self._pod_lookup)

    def with_pod_lookup(self, pod_lookup: PodLookup | None) -> RuleAttributor:
        """The same rules and tags with a pod lookup wired in."""
        tags = tuple((key[len(TAG_PREFIX) :], value) for key, value in self._tag_facts.items())
        return RuleAttributor(self._settings, tags, pod_lookup)

    def _label(self, value: str) -> str:
        return sanitize_label(value, self._settings.max_label_length)

    def _first_match(self, rules: Iterable[AttributionRule], facts: Mapping[str, str]) -> tuple[str, str] | None:
        """(team, workload) of the first rule whose facts all match and whose team renders non-empty."""
        for rule in rules:
            if _matches(rule, facts):
                team = self._label(_render(rule.team, facts))
                # An empty team is a template over a missing fact, e.g. "{tag:Team}" on an untagged
                # host: the rules after it still get their turn.
                if team:
                    return team, self._label(_render(rule.workload, facts))
        return None

    def process_facts(self, process: ProcessReading) -> dict[str, str]:
        """Every fact a rule can match for this process (before sanitising)."""
        cgroup = parse_cgroup(process.cgroup)
        pod_ref = self._lookup(cgroup)
        facts = dict(self._tag_facts)
        facts.update(
            {
                "user": process.user,
                "command": process.command,
                "cgroup": process.cgroup,
                "unit": cgroup.unit,
                "container": cgroup.container_id,
                "pod": pod_ref.pod if pod_ref is not None and pod_ref.pod else cgroup.pod_uid,
                "pod_uid": cgroup.pod_uid,
                "namespace": pod_ref.namespace if pod_ref is not None else "",
                "container_name": pod_ref.container if pod_ref is not None else "",
                "runtime_tag": process.runtime_tag,
            }
        )
        return facts

    def _lookup(self, cgroup: CgroupFacts) -> PodFacts | None:
        if self._pod_lookup is None or not (cgroup.pod_uid or cgroup.container_id):
            return None
        try:
            return self._pod_lookup(cgroup)
        except Exception:
            return None

    def process_owner(self, process: ProcessReading) -> Owner:
        """The owner of one process; team is '' when no rule matched."""
        facts = self.process_facts(process)
        container = facts["container_name"] or facts["container"][:12]
        base = Owner(
            team="",
            workload="",
            pod=self._label(facts["pod"]),
            namespace=self._label(facts["namespace"]),
            container=self._label(container),
            unit=self._label(facts["unit"]),
        )
        match = self._first_match(self._process_rules, facts)
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
        match = self._first_match(self._process_rules, facts)
        return base if match is None else replace(base, team=match[0], workload=match[1])

    def host_owner(self, identity: HostIdentity) -> Owner:
        """The instance's owner: a tag-only rule, else its team/workload tags, else the default, else `unassigned`."""
        tags = dict(identity.tags)
        facts = {TAG_PREFIX + key: value for key, value in identity.tags}
        settings = self._settings
        match = self._first_match(self._host_rules, facts)
        if match is not None:
            return Owner(team=match[0], workload=match[1])
        team = self._label(tags.get(settings.team_tag, "")) or self._label(settings.default_team) or UNASSIGNED
        workload = self._label(tags.get(settings.workload_tag, "")) or self._label(settings.default_workload)
        return Owner(team=team, workload=workload)
