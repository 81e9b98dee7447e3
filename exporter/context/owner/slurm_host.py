"""The Slurm side of attribution on one host: the job cache (scontrol) and dcgm-exporter's job map.

The daemon keeps one `SlurmHost` for its whole life, so cached jobs and error counts survive a
configuration reload; `apply` swaps in only the parts whose settings changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from exporter.clock import Clock
from exporter.config.model import AttributionSettings
from exporter.context.errors import ErrorCounts, LogOnce
from exporter.context.owner.hpc_jobs import JobMapping, read_job_mapping
from exporter.context.owner.slurm import COLLECTOR, Lookup, SlurmJob, SlurmJobs
from exporter.readings import DeviceIdentity

log = logging.getLogger(__name__)


class SlurmHost:
    """Answers `job(job_id)` for attribution and `jobs_for_device(identity)` for accounting."""

    def __init__(self, settings: AttributionSettings, clock: Clock, lookup: Lookup | None = None) -> None:
        self._clock = clock
        self._lookup = lookup
        self._errors = ErrorCounts()
        self._once = LogOnce(log)
        self._jobs = SlurmJobs(settings.slurm, clock, lookup, self._errors)
        self._directory = settings.hpc_job_mapping_dir
        self._mapping = JobMapping()
        self._problems: frozenset[tuple[str, str]] = frozenset()

    def apply(self, settings: AttributionSettings) -> None:
        """A reloaded configuration: a changed `slurm` section starts a new, empty job cache."""
        if settings.slurm != self._jobs.settings:
            self._jobs.close()
            self._jobs = SlurmJobs(settings.slurm, self._clock, self._lookup, self._errors)
        if settings.hpc_job_mapping_dir != self._directory:
            self._directory = settings.hpc_job_mapping_dir
            self._mapping = JobMapping()
            self._problems = frozenset()

    def job(self, job_id: str) -> SlurmJob | None:
        """The job's account and partition when known; never blocks (see SlurmJobs.job)."""
        return self._jobs.job(job_id)

    def jobs_for_device(self, identity: DeviceIdentity) -> tuple[str, ...]:
        """The jobs the mapping directory lists for this device, as of the last `refresh`."""
        return self._mapping.for_device(identity)

    async def refresh(self) -> None:
        """Read the mapping directory again, off the event loop (a slow file system must not stall scrapes)."""
        directory = self._directory
        if directory is None:
            return
        mapping, problems = await asyncio.to_thread(read_job_mapping, directory)
        if directory != self._directory:
            return  # a reload changed it meanwhile
        self._mapping = mapping
        for _, job_ids in mapping.jobs:
            for job_id in job_ids:
                self._jobs.job(job_id)  # queue the lookups now, before accounting asks
        current = frozenset((problem.reason, problem.message) for problem in problems)
        # A bad file is counted once when it appears, not on every poll while it stays.
        for reason, message in sorted(current - self._problems):
            self._errors.add(COLLECTOR, reason)
            self._once.log(f"{reason}:{message}", logging.WARNING, "hpc job mapping: %s", message)
        self._problems = current

    async def settle(self, timeout: float) -> None:
        """Give lookups of jobs seen for the first time up to `timeout` seconds (waiting off the loop)."""
        if not self._jobs.settle(0.0):  # the usual case, no new job: no thread hop
            await asyncio.to_thread(self._jobs.settle, timeout)

    def errors(self) -> Mapping[tuple[str, str], int]:
        """Cumulative errors by (collector, reason), collector `slurm`: lookups and the mapping directory."""
        return self._errors.snapshot()

    def status(self) -> tuple[bool, float, float | None] | None:
        """The last scontrol lookup: (succeeded, duration, Unix time of the last success); None before any."""
        return self._jobs.status()

    def close(self) -> None:
        """Stop the lookup worker."""
        self._jobs.close()
