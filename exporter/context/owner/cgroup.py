"""Parse `/proc/<pid>/cgroup` into the owner facts it encodes: pod UID, container ID, systemd unit.

The kubelet, the container runtimes and systemd all name cgroups after what they run, so the
cgroup path of a process tells which Kubernetes pod, which container and which systemd unit it
belongs to, without any API call. Both cgroup layouts are understood:

- v2 (unified): one line `0::/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<64 hex>.scope`;
- v1: one line per hierarchy, e.g. `4:memory:/kubepods/burstable/pod<uid>/<64 hex>`, where the
  systemd unit comes from the `name=systemd` line.

Slurm (proctrack/cgroup, task/cgroup) puts each job step's processes in a cgroup named after
the job, so the path also gives the Slurm job ID:

- v1: `4:memory:/slurm/uid_1000/job_4242/step_0/task_0`, or `/slurm_<node>/uid_...` when one host
  runs several slurmd (multiple-slurmd builds);
- v2: `0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0`, or
  `<node>_slurmstepd.scope` with several slurmd; steps may be `step_batch`, `step_extern`,
  `step_interactive` or a number.

Paths seen from inside a cgroup namespace (a DaemonSet pod reading the host's processes) start
with `/../..`; the parser looks at path components, so that prefix does no harm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# A pod UID is an RFC 4122 UUID (API pods) or 32 hex digits (static pods: a hash of the manifest).
# The systemd cgroup driver writes the dashes as underscores, since '-' nests slices.
_UID = r"[0-9a-f]{8}(?:[-_]?[0-9a-f]{4}){3}[-_]?[0-9a-f]{12}"
# `pod<uid>` (cgroupfs driver) or `kubepods[-<qos>]-pod<uid>.slice` (systemd driver).
_POD_RE = re.compile(rf"^(?:kubepods(?:-[a-z]+)?-)?pod({_UID})(?:\.slice)?$")
# `<runtime>-<id>.scope` (systemd driver: cri-containerd, crio, docker, libpod) or a bare id (cgroupfs).
_CONTAINER_RE = re.compile(r"^(?:(?:cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")
# conmon and other runtime helpers sit next to the container; they never hold a device.
_RUNTIME_HELPER_RE = re.compile(r"^(?:crio-conmon|libpod-conmon)-[0-9a-f]{64}\.scope$")
_UNIT_SUFFIXES = (".service", ".scope")
# The Slurm components a job directory may follow: `slurm`, `slurm_<node>` (v1), `uid_<uid>` (v1),
# `slurmstepd.scope` or `<node>_slurmstepd.scope` (v2).
_SLURM_ROOT_RE = re.compile(r"^(?:slurm(?:_[^/]+)?|(?:[^/]+_)?slurmstepd\.scope)$")
_SLURM_UID_RE = re.compile(r"^uid_(\d{1,10})$")
_SLURM_JOB_RE = re.compile(r"^job_(\d{1,20})$")


@dataclass(frozen=True)
class CgroupFacts:
    """What a process's cgroup path says about its owner; a field is "" when the path has no such part.

    - `pod_uid`: Kubernetes pod UID with dashes (`3f2a1b4c-...`), as the API shows it;
    - `container_id`: the 64-hex container ID from the runtime (containerd, CRI-O, Docker, Podman);
    - `unit`: the innermost systemd unit (`train.service`, `session-4.scope`), "" for containers.

    - `slurm_job_id`: the Slurm job whose step cgroup holds the process (`4242`);
    - `slurm_uid`: the job owner's numeric uid, which only the v1 layout names (`uid_1000`).

    Strings rather than None so the facts drop straight into label values and glob rules.
    """

    pod_uid: str = ""
    container_id: str = ""
    unit: str = ""
    slurm_job_id: str = ""
    slurm_uid: str = ""


def _cgroup_paths(text: str) -> list[tuple[str, str]]:
    """Return (controllers, path) per line, the unified (`0::`) and `name=systemd` lines first."""
    entries: list[tuple[int, str, str]] = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        rank = 0 if (hierarchy == "0" and controllers == "") else 1 if controllers == "name=systemd" else 2
        entries.append((rank, controllers, path))
    entries.sort(key=lambda entry: entry[0])
    return [(controllers, path) for _, controllers, path in entries]


def _slurm_job(components: list[str]) -> tuple[str, str]:
    """(job ID, uid) when the path runs through a Slurm root to a `job_<id>` directory; else ("", "")."""
    inside = False
    uid = ""
    for component in components:
        if _SLURM_ROOT_RE.match(component):
            inside = True
            continue
        if not inside:
            continue
        uid_match = _SLURM_UID_RE.match(component)
        if uid_match:
            uid = uid_match.group(1)
            continue
        job_match = _SLURM_JOB_RE.match(component)
        if job_match:
            return job_match.group(1), uid
        inside = False  # anything else between the root and the job: not Slurm's layout
    return "", ""


def _parse_path(path: str) -> CgroupFacts:
    components = [c for c in path.split("/") if c and c != ".."]
    slurm_job_id, slurm_uid = _slurm_job(components)
    if slurm_job_id:
        # slurmstepd's scope names the Slurm daemon, not the workload: the job is the owner.
        return CgroupFacts(slurm_job_id=slurm_job_id, slurm_uid=slurm_uid)
    pod_uid = ""
    container_id = ""
    unit = ""
    for component in components:
        pod_match = _POD_RE.match(component)
        if pod_match:
            pod_uid = pod_match.group(1).replace("_", "-").lower()
            continue
        container_match = _CONTAINER_RE.match(component)
        if container_match:
            container_id = container_match.group(1)
            continue
        if _RUNTIME_HELPER_RE.match(component):
            continue
        if component.endswith(_UNIT_SUFFIXES):
            unit = component  # keep the innermost: user@1000.service/app.slice/x.service -> x.service
    if container_id:
        unit = ""  # a container's scope unit names the runtime, not the workload
    return CgroupFacts(pod_uid=pod_uid, container_id=container_id, unit=unit)


# Called for every process on every device each poll, with the same few texts: parse each once.
@lru_cache(maxsize=1024)
def parse_cgroup(text: str) -> CgroupFacts:
    """Parse the contents of `/proc/<pid>/cgroup` (v1 or v2) into `CgroupFacts`.

    The first line (unified hierarchy first, then `name=systemd`, then the others) that names a
    Slurm job, a pod or a container wins; otherwise the unit comes from the first line that names
    one. Text that is empty or not a cgroup file gives `CgroupFacts()` with every field "".
    """
    unit_only: CgroupFacts | None = None
    for _, path in _cgroup_paths(text):
        facts = _parse_path(path)
        if facts.slurm_job_id or facts.pod_uid or facts.container_id:
            return facts
        if facts.unit and unit_only is None:
            unit_only = facts
    return unit_only if unit_only is not None else CgroupFacts()
