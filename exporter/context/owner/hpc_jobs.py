"""dcgm-exporter's HPC job-mapping directory (`--hpc-job-mapping-dir`): which Slurm jobs hold which GPU.

Sites running NVIDIA's dcgm-exporter have a Slurm prolog that writes, and an epilog that
removes, one file per GPU in a directory: the file is named after the GPU index (`0`, `1`, ...;
`<gpu>.<gpu instance>` for a MIG instance, e.g. `2.1`) and lists the IDs of the jobs on that GPU,
one per line. Reading the same directory attributes a GPU to its job even when no process is
visible (the job runs in another pid namespace, or holds the GPU without a process yet).

Bad files never stop the others: a file whose name is not a GPU index, that cannot be read, that
is over MAX_FILE_BYTES, or a line that is not a job ID is skipped and reported as a problem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from exporter.config.files import NotRegularFile, read_regular_file
from exporter.context.owner.slurm import valid_job_id
from exporter.readings import DeviceIdentity

MAX_FILE_BYTES = 64 * 1024
MAX_FILES = 1024
MAX_JOBS_PER_DEVICE = 16
_FILE_NAME = re.compile(r"^(\d{1,3})(?:\.(\d{1,2}))?$")
_NVIDIA_DEVICE = re.compile(r"^nvidia(\d+)(?:-mig(\d+))?$")


@dataclass(frozen=True)
class JobMapping:
    """GPU key (`0`, `2.1`) -> job IDs, as the mapping directory said when it was read."""

    jobs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def for_device(self, identity: DeviceIdentity) -> tuple[str, ...]:
        """The job IDs listed for this device (an NVIDIA GPU or MIG instance); () for any other."""
        match = _NVIDIA_DEVICE.match(identity.device)
        if match is None:
            return ()
        key = match.group(1) if match.group(2) is None else f"{match.group(1)}.{match.group(2)}"
        return dict(self.jobs).get(key, ())


@dataclass(frozen=True)
class MappingProblem:
    """One thing wrong with the directory; `reason` is the `accel_exporter_errors_total` reason."""

    reason: str
    message: str


def read_job_mapping(directory: str) -> tuple[JobMapping, tuple[MappingProblem, ...]]:
    """Read every GPU file of `directory`; a missing directory is no jobs and one problem."""
    problems: list[MappingProblem] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        # The prolog creates it with the first job: until then, no job holds a GPU.
        return JobMapping(), ()
    except OSError as exc:
        problem = f"cannot list {directory}: {exc.strerror or exc}; let the exporter's user read it"
        return JobMapping(), (MappingProblem("job_map_unreadable", problem),)
    jobs: list[tuple[str, tuple[str, ...]]] = []
    for name in names[:MAX_FILES]:
        if name.startswith("."):
            continue  # an editor's or a prolog's temporary file
        if _FILE_NAME.match(name) is None:
            problems.append(
                MappingProblem("job_map_bad_file", f"{directory}/{name}: not named after a GPU index (0, 1, or 2.1)")
            )
            continue
        listed = _read_jobs(Path(directory) / name, problems)
        if listed:
            jobs.append((name, listed))
    return JobMapping(tuple(jobs)), tuple(problems)


def _read_jobs(path: Path, problems: list[MappingProblem]) -> tuple[str, ...]:
    try:
        raw = read_regular_file(str(path), MAX_FILE_BYTES)
    except FileNotFoundError:
        return ()  # removed by an epilog while the directory was read
    except NotRegularFile as exc:
        problems.append(MappingProblem("job_map_bad_file", f"{path}: {exc}"))
        return ()
    except OSError as exc:
        problems.append(MappingProblem("job_map_unreadable", f"{path}: {exc.strerror or exc}"))
        return ()
    if len(raw) > MAX_FILE_BYTES:
        problems.append(MappingProblem("job_map_bad_file", f"{path}: over {MAX_FILE_BYTES // 1024} KiB"))
        return ()
    listed: list[str] = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        job_id = line.strip()
        if not job_id:
            continue
        if not valid_job_id(job_id):
            problems.append(MappingProblem("job_map_bad_line", f"{path} line {number}: not a job ID"))
            continue
        if job_id not in listed:
            listed.append(job_id)
    return tuple(listed[:MAX_JOBS_PER_DEVICE])
