"""Scenario files: the simulated host, its accelerators, processes and faults, as validated YAML.

One scenario drives both simulators (the pynvml-compatible module and the fake neuron-monitor).
Times are seconds from the scenario's start; negative start times mean "started before".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from exporter.config.model import HostSettings
from exporter.config.reader import ConfigInvalid, Reader, YamlProblem, yaml_document
from exporter.sim.patterns import Burst, Constant, Pattern, RandomSteps, Schedule

NO_ACTIVITY = Constant(0.0)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
FAULT_TYPES = ("lost", "error", "unsupported", "init_error", "xid", "reload", "hang")


@dataclass(frozen=True)
class Fault:
    """A hardware or driver fault: `lost` between at and until, `error`/`unsupported` on a call, `xid`, or a driver `reload` at `at`."""

    type: str
    call: str = "*"
    at: float = 0.0
    until: float | None = None
    every: int = 1
    error: str = "Unknown"
    xid: int = 0


@dataclass(frozen=True)
class MigInstance:
    """A MIG GPU instance on a GPU."""

    gi: int
    slices: int
    memory_total: int
    start: float = 0.0  # created at (scenario time): MIG layouts change while the exporter runs
    end: float | None = None  # destroyed at
    # Seen only through GPM (Hopper and later): graphics/compute activity, SMs busy, tensor cores busy.
    utilization: Pattern = NO_ACTIVITY
    sm_activity: Pattern = NO_ACTIVITY
    tensor_activity: Pattern = NO_ACTIVITY


@dataclass(frozen=True)
class Gpu:
    """One simulated NVIDIA GPU."""

    index: int
    model: str
    memory_total: int
    utilization: Pattern
    power_idle_watts: float = 50.0
    power_max_watts: float = 400.0
    memory_baseline: int = 0
    mig: tuple[MigInstance, ...] = ()
    faults: tuple[Fault, ...] = ()
    uuid: str = ""
    # History before the scenario starts: when the GPU last computed (scenario time, <= 0), which
    # the demo hands to the idle clock as a state directory from an earlier run would.
    last_active: float | None = None
    # GPM (nvmlGpmQueryDeviceSupport): on Hopper and later unless the scenario says otherwise.
    gpm: bool = False
    # Share of SMs busy (time-averaged); defaults to `utilization`: kernels that fill the GPU.
    sm_activity: Pattern = NO_ACTIVITY
    tensor_activity: Pattern = NO_ACTIVITY
    dram_activity: Pattern = NO_ACTIVITY
    sm_occupancy: Pattern = NO_ACTIVITY


# Model names of GPUs with GPM (Hopper, Blackwell and later), as nvmlDeviceGetName spells them.
GPM_MODELS = ("H100", "H200", "H800", "H20", "GH200", "B100", "B200", "GB200", "B300", "GB300")


@dataclass(frozen=True)
class SimProcess:
    """A process that holds a device between `start` and `end`, optionally repeating (churn)."""

    pid: int
    device: str  # "0" for GPU 0, "0/1" for MIG gi 1 on GPU 0
    memory: int
    user: str = "root"
    command: str = "python"
    started: float = 0.0  # process start time relative to scenario start (may be negative)
    start: float = 0.0
    end: float | None = None
    cgroup: str = ""
    every: float = 0.0  # > 0: a new process (new pid) every `every` seconds, living `lifetime`
    lifetime: float = 0.0


@dataclass(frozen=True)
class NeuronRuntime:
    """A Neuron application: pid, tag, owned cores and their load."""

    pid: int
    tag: str
    cores: tuple[int, ...]
    utilization: Pattern
    memory_per_core: int
    listed_cores: tuple[int, ...] = ()  # cores it lists with 0 % without owning them
    start: float = 0.0
    end: float | None = None
    executions_per_second: float = 0.0
    errors_per_second: float = 0.0
    user: str = "root"
    cgroup: str = ""
    command: str = "python"
    started: float = 0.0  # process start time relative to scenario start (may be negative)


@dataclass(frozen=True)
class NeuronHost:
    """The Neuron side of a scenario."""

    device_type: str
    devices: int
    cores_per_device: int
    memory_per_device: int
    runtimes: tuple[NeuronRuntime, ...] = ()
    crash_after_lines: int = 0
    garbage_every: int = 0
    oversized_every: int = 0
    oversized_bytes: int = 2 * 1024 * 1024
    error_every: int = 0


@dataclass(frozen=True)
class SimSlurmJob:
    """A job slurmctld knows, as the simulated `scontrol show job <id> --json` reports it."""

    job_id: int
    account: str
    partition: str
    user: str
    name: str = ""
    state: str = "RUNNING"
    started: float = 0.0  # scenario time the job started (negative: before the demo)


@dataclass(frozen=True)
class SlurmCluster:
    """The Slurm side of a scenario: the controller's jobs and dcgm-exporter's job-mapping files."""

    cluster: str = "cluster"
    jobs: tuple[SimSlurmJob, ...] = ()
    # File name (GPU index, or `<gpu>.<gi>`) -> job IDs, as a Slurm prolog writes them.
    job_mapping: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Scenario:
    """A whole simulated host."""

    name: str
    description: str
    host: HostSettings
    driver_version: str = "550.54.15"
    nvml_missing: bool = False
    sample_period: float = 1.0 / 6.0
    buffer_samples: int = 1200
    gpus: tuple[Gpu, ...] = ()
    processes: tuple[SimProcess, ...] = ()
    neuron: NeuronHost | None = None
    nvml_faults: tuple[Fault, ...] = field(default=())
    slurm: SlurmCluster | None = None
    # The configuration --demo uses when no --config.file is given (owned prices, Slurm rules...);
    # absolute once loaded. "" means the shared demo-config.yaml.
    demo_config: str = ""


def parse_size(value: Any) -> int | None:
    """`40GiB`, `512 MiB`, or a number of bytes; None when not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            size = float(match.group(1)) * _UNITS[match.group(2)]
            return int(size) if math.isfinite(size) else None  # 400 digits of GiB: not a size
    return None


def _size(r: Reader, key: str, default: int) -> int:
    value = r.raw(key)
    if value is None:
        return default
    size = parse_size(value)
    if size is None:
        r.error(key, "a size like '40GiB' or a number of bytes", value)
        return default
    return size


def _pattern(r: Reader, key: str) -> Pattern:
    value = r.raw(key)
    if value is None:
        return Constant(0.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if 0.0 <= value <= 1.0:
            return Constant(float(value))
        r.error(key, "a utilization from 0 to 1", value)
        return Constant(0.0)
    p = r.section(key)
    kinds = [k for k in ("constant", "burst", "schedule", "random") if p.has(k)]
    if len(kinds) != 1:
        r.error(key, "exactly one of constant, burst, schedule, random", value)
        return Constant(0.0)
    kind = kinds[0]
    if kind == "constant":
        result: Pattern = Constant(p.number("constant", 0.0, minimum=0.0, maximum=1.0))
    elif kind == "burst":
        b = p.section("burst")
        period = b.duration("period", 2.0, minimum=0.01)
        on = b.duration("busy", 0.2, minimum=0.0, maximum=period)
        result = Burst(
            on=on, period=period, value=b.number("value", 1.0, minimum=0.0, maximum=1.0), offset=b.number("offset", 0.0)
        )
        b.finish()
    elif kind == "schedule":
        s = p.section("schedule")
        steps = []
        for step in s.items("steps"):
            steps.append((step.duration("at", 0.0), step.number("value", 0.0, minimum=0.0, maximum=1.0)))
            step.finish()
        result = Schedule(tuple(sorted(steps)), repeat=s.duration("repeat", 0.0))
        s.finish()
    else:
        q = p.section("random")
        result = RandomSteps(
            mean=q.number("mean", 0.5, minimum=0.0, maximum=1.0),
            spread=q.number("spread", 0.2, minimum=0.0, maximum=1.0),
            step=q.duration("step", 5.0, minimum=0.01),
            seed=q.integer("seed", 0),
        )
        q.finish()
    p.finish()
    return result


def _pattern_or(r: Reader, key: str, default: Pattern) -> Pattern:
    """The pattern under `key`, or `default` when the key is absent."""
    return default if r.raw(key) is None else _pattern(r, key)


def _faults(r: Reader, key: str) -> tuple[Fault, ...]:
    faults = []
    for f in r.items(key):
        until = f.raw("until")
        faults.append(
            Fault(
                type=f.string("type", "error", choices=FAULT_TYPES),
                call=f.string("call", "*"),
                at=f.duration("at", 0.0),
                until=None if until is None else f.duration("until", 0.0),
                every=f.integer("every", 1, minimum=1),
                error=f.string("error", "Unknown"),
                xid=f.integer("xid", 0, minimum=0, maximum=65535),
            )
        )
        f.finish()
    return tuple(faults)


def _gpu(g: Reader, position: int) -> Gpu:
    index = g.integer("index", position, minimum=0, maximum=255)
    memory_total = _size(g, "memory_total", 40 * 2**30)
    power = g.section("power")
    mig = []
    for m in g.items("mig"):
        busy = _pattern(m, "utilization")
        mig.append(
            MigInstance(
                gi=m.integer("gi", 0, minimum=0),
                slices=m.integer("slices", 1, minimum=1, maximum=8),
                memory_total=_size(m, "memory_total", 5 * 2**30),
                start=m.duration("start", 0.0),
                end=None if m.raw("end") is None else m.duration("end", 0.0),
                utilization=busy,
                sm_activity=_pattern_or(m, "sm_activity", busy),
                tensor_activity=_pattern(m, "tensor_activity"),
            )
        )
        m.finish()
    model = g.string("model", "NVIDIA A100-SXM4-40GB")
    utilization = _pattern(g, "utilization")
    gpu = Gpu(
        index=index,
        model=model,
        memory_total=memory_total,
        utilization=utilization,
        power_idle_watts=power.number("idle", 50.0, minimum=0.0),
        power_max_watts=power.number("max", 400.0, minimum=0.0),
        memory_baseline=_size(g, "memory_baseline", 0),
        mig=tuple(mig),
        faults=_faults(g, "faults"),
        uuid=g.string("uuid", ""),
        last_active=None if g.raw("last_active") is None else g.number("last_active", 0.0, maximum=0.0),
        gpm=g.boolean("gpm", any(name in model for name in GPM_MODELS)),
        sm_activity=_pattern_or(g, "sm_activity", utilization),
        tensor_activity=_pattern(g, "tensor_activity"),
        dram_activity=_pattern(g, "dram_activity"),
        sm_occupancy=_pattern(g, "sm_occupancy"),
    )
    power.finish()
    g.finish()
    return gpu


MAX_COMMAND_BYTES = 64 * 2**20  # a simulated command line larger than any real argv limit is a typo


def padded_command(command: str, size: int) -> str:
    """`command` followed by generated arguments up to `size` characters (a long argv, as some launchers write)."""
    if size <= len(command):
        return command
    argument = " --shard=0123456789abcdef"
    repeats = (size - len(command)) // len(argument) + 1
    return (command + argument * repeats)[:size]


def _process(p: Reader) -> SimProcess:
    end = p.raw("end")
    command_bytes = _size(p, "command_bytes", 0)
    if command_bytes > MAX_COMMAND_BYTES:
        p.problem("command_bytes", f"at most {MAX_COMMAND_BYTES // 2**20}MiB, found {command_bytes} bytes")
        command_bytes = 0
    command = padded_command(p.string("command", "python"), command_bytes)
    proc = SimProcess(
        pid=p.integer("pid", 1000, minimum=1, maximum=2**22),
        device=p.string("device", "0"),
        memory=_size(p, "memory", 0),
        user=p.string("user", "root"),
        command=command,
        started=p.number("started", 0.0),
        start=p.duration("start", 0.0),
        end=None if end is None else p.duration("end", 0.0),
        cgroup=p.string("cgroup", ""),
        every=p.duration("every", 0.0),
        lifetime=p.duration("lifetime", 0.0),
    )
    p.finish()
    return proc


def _neuron(n: Reader) -> NeuronHost:
    runtimes = []
    for rt in n.items("runtimes"):
        end = rt.raw("end")
        cores = rt.raw("cores")
        listed = rt.raw("listed_cores")
        if not isinstance(cores, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cores
        ):
            rt.error("cores", "a list of NeuronCore indices", cores)
            cores = []
        if listed is not None and (
            not isinstance(listed, list)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in listed)
        ):
            rt.error("listed_cores", "a list of NeuronCore indices", listed)
            listed = []
        runtimes.append(
            NeuronRuntime(
                pid=rt.integer("pid", 1, minimum=1, maximum=2**22),
                tag=rt.string("tag", ""),
                cores=tuple(cores),
                listed_cores=tuple(listed or ()),
                utilization=_pattern(rt, "utilization"),
                memory_per_core=_size(rt, "memory_per_core", 2**30),
                start=rt.duration("start", 0.0),
                end=None if end is None else rt.duration("end", 0.0),
                executions_per_second=rt.number("executions_per_second", 0.0, minimum=0.0),
                errors_per_second=rt.number("errors_per_second", 0.0, minimum=0.0),
                user=rt.string("user", "root"),
                cgroup=rt.string("cgroup", ""),
                command=rt.string("command", "python"),
                started=rt.number("started", 0.0),
            )
        )
        rt.finish()
    faults = n.section("faults")
    host = NeuronHost(
        device_type=n.string("device_type", "inferentia2"),
        devices=n.integer("devices", 1, minimum=1, maximum=64),
        cores_per_device=n.integer("cores_per_device", 2, minimum=1, maximum=16),
        memory_per_device=_size(n, "memory_per_device", 32 * 2**30),
        runtimes=tuple(runtimes),
        crash_after_lines=faults.integer("crash_after_lines", 0, minimum=0),
        garbage_every=faults.integer("garbage_every", 0, minimum=0),
        oversized_every=faults.integer("oversized_every", 0, minimum=0),
        oversized_bytes=_size(faults, "oversized_bytes", 2 * 1024 * 1024),
        error_every=faults.integer("error_every", 0, minimum=0),
    )
    faults.finish()
    n.finish()
    return host


def _slurm(r: Reader) -> SlurmCluster:
    jobs = []
    for j in r.items("jobs"):
        jobs.append(
            SimSlurmJob(
                job_id=j.integer("job_id", 1, minimum=1, maximum=2**32),
                account=j.string("account", ""),
                partition=j.string("partition", ""),
                user=j.string("user", "root"),
                name=j.string("name", ""),
                state=j.string("state", "RUNNING"),
                started=j.number("started", 0.0),
            )
        )
        j.finish()
    mapping = []
    raw = r.raw("job_mapping")
    if raw is not None and not isinstance(raw, dict):
        r.error("job_mapping", "a mapping of GPU index to a list of job IDs", raw)
        raw = {}
    for name, ids in (raw or {}).items():
        if not isinstance(ids, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids):
            r.error(f"job_mapping.{name}", "a list of job IDs", ids)
            continue
        mapping.append((str(name), tuple(str(i) for i in ids)))
    cluster = SlurmCluster(cluster=r.string("cluster", "cluster"), jobs=tuple(jobs), job_mapping=tuple(mapping))
    r.finish()
    return cluster


def parse_scenario(document: Any, source: str = "") -> Scenario:
    """Validate a parsed scenario document; raises ConfigInvalid naming every bad key."""
    errors: list[str] = []
    top = Reader(document, "", errors)
    host = top.section("host")
    host_settings = HostSettings(
        provider=host.optional_string("provider"),
        instance_type=host.optional_string("instance_type"),
        instance_id=host.optional_string("instance_id"),
        region=host.optional_string("region"),
        zone=host.optional_string("zone"),
        lifecycle=host.optional_string("lifecycle"),
        tags=tuple(sorted(host.string_map("tags").items())),
    )
    host.finish()
    nvml = top.section("nvml")
    gpus = tuple(_gpu(g, i) for i, g in enumerate(top.items("gpus")))
    indices = [g.index for g in gpus]
    if len(set(indices)) != len(indices):
        top.problem("gpus", f"GPU indices must be unique, found {indices}")
    scenario = Scenario(
        name=top.string("name", "unnamed"),
        description=top.string("description", ""),
        host=host_settings,
        driver_version=top.string("driver_version", "550.54.15"),
        nvml_missing=nvml.boolean("missing", False),
        sample_period=nvml.duration("sample_period", 1.0 / 6.0, minimum=0.01, maximum=10.0),
        buffer_samples=nvml.integer("buffer_samples", 1200, minimum=1, maximum=1_000_000),
        nvml_faults=_faults(nvml, "faults"),
        gpus=gpus,
        processes=tuple(_process(p) for p in top.items("processes")),
        neuron=_neuron(top.section("neuron")) if top.raw("neuron") is not None else None,
        slurm=_slurm(top.section("slurm")) if top.raw("slurm") is not None else None,
        demo_config=top.string("demo_config", ""),
    )
    nvml.finish()
    top.finish()
    if errors:
        raise ConfigInvalid(errors, source)
    return scenario


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package."""
    folder = resources.files("exporter.sim").joinpath("scenarios")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    """Load a built-in scenario by name, or a scenario file by path.

    A `demo_config` is resolved against the package's sim folder (built-in scenarios) or the
    scenario file's folder, and must exist.
    """
    scenario = _load(name_or_path)
    if not scenario.demo_config:
        return scenario
    folder = Path(__file__).resolve().parent if name_or_path in builtin_scenarios() else Path(name_or_path).parent
    config = (folder / scenario.demo_config).resolve()
    if not config.is_file():
        raise ConfigInvalid([f"demo_config: no such file {str(config)!r}"], name_or_path)
    return replace(scenario, demo_config=str(config))


def _load(name_or_path: str) -> Scenario:
    if name_or_path in builtin_scenarios():
        text = (
            resources.files("exporter.sim")
            .joinpath("scenarios")
            .joinpath(f"{name_or_path}.yaml")
            .read_text(encoding="utf-8")
        )
        source = name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(builtin_scenarios())
            raise ConfigInvalid([f"no such scenario; use a file path or one of: {known}"], name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigInvalid([f"cannot read the scenario: {exc}"], name_or_path) from None
        source = name_or_path
    try:
        document = yaml_document(text)
    except YamlProblem as exc:
        raise ConfigInvalid([str(exc)], source) from None
    return parse_scenario(document, source)
