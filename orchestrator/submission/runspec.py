"""What to run and where, decided before anything is submitted: a `RunSpec` per run.

A RunSpec is a validated RunConfig plus the resources it is given (nodes, tasks per node, GPUs per
node, time limit), the scheduler options the user chose, and the environment its tasks get. It is
a frozen value built by pure functions; the executor (orchestrator/submission/executor.py) turns it into a job.

World size is `cfg.hardware.gpus` (the seed's configs: 8 = one 8-GPU node). On SLURM, tasks per node default
to min(world, GPUs per node) and nodes to ceil(world / tasks per node). Locally every rank is a
process on this machine.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from orchestrator import safety
from refit_core.config import RunConfig
from refit_core.planning.devices import DeviceMap, assign_devices
from refit_core.planning import methods
from refit_core.errors import ConfigError
from refit_core.planning.layout import MAX_WORLD
from refit_core.numbers import GIB, format_time
from refit_core.planning.precision import execution_refusal

if TYPE_CHECKING:
    from orchestrator.submission.clusters import Cluster, Facts

CLUSTERS = ("auto", "slurm", "local")  # --cluster (orchestrator/submission/clusters.py)
DEFAULT_TIME = "30"  # minutes, SLURM's --time syntax
MAX_TIME_S = 366 * 86400

# The user's environment variables that jobs need and therefore carry, by prefix: transports' tuning
# (NCCL_*, NVSHMEM_*, ...). They are recorded in run.json and rendered scripts.
FORWARD_PREFIXES = ("NCCL_", "NVSHMEM_", "TORCH_NCCL_", "TORCH_SYMM_MEM_", "TORCH_DISTRIBUTED_", "GLOO_",
                    "UCX_", "CUDA_DEVICE_MAX_CONNECTIONS", "OMP_NUM_THREADS")
# refitctl's own per-task variables, by name: an allow-list, since other REFITCTL_* variables (a site's,
# a user's) may hold secrets and must not be copied into run.json or a script. Run settings given as variables
# (REFITCTL_NVSHMEM_SYNC, ...) are not carried: they were resolved into the config (refit_core/config.py).
FORWARD_NAMES = ("REFITCTL_FAULT",)
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ClusterOptions:
    """Scheduler options as the user gave them; None = the default (or the scheduler's)."""

    cluster: str = "auto"
    nodes: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    request_gpus: bool = True
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = DEFAULT_TIME
    exclusive: bool = False
    job_name: str | None = None
    sbatch_args: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"unknown --cluster {self.cluster!r}: use one of {', '.join(CLUSTERS)}")
        for name in ("nodes", "tasks_per_node", "cpus_per_task"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_WORLD):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer 1..{MAX_WORLD}, got {v!r}")
        parse_time(self.time)
        sbatch_parameters(self.sbatch_args)
        if self.job_name is not None:
            safety.name("--job-name", self.job_name)
        for name in ("partition", "account", "qos"):
            v = getattr(self, name)
            if v is not None:
                safety.script_text(f"--{name}", v, spaces=False)
        for a in self.srun_args:
            safety.script_text("--srun-arg", a)
        for k, v in self.env:
            if not _ENV_KEY.fullmatch(k):
                raise ConfigError(f"--env {k!r}: write it as KEY=VALUE, KEY made of letters, digits and _")
            safety.script_text(f"--env {k}=", v, limit=safety.PATH_MAX)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ClusterOptions":
        d = dict(d)
        for k in ("sbatch_args", "srun_args"):
            d[k] = tuple(d.get(k, ()))
        d["env"] = tuple(tuple(kv) for kv in d.get("env", ()))
        return cls(**d)


@dataclass(frozen=True)
class Resources:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int  # requested from the scheduler; 0 = none
    time_limit_s: int

    @property
    def tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        gpus = f", {self.gpus_per_node} GPUs per node" if self.gpus_per_node else ", no GPUs requested"
        return (f"{self.nodes} node{'s' if self.nodes > 1 else ''} x {self.tasks_per_node} tasks{gpus}, "
                f"time limit {format_time(self.time_limit_s)}")


@dataclass(frozen=True)
class RunSpec:
    """One run, fully decided: config, executor, resources, environment."""

    name: str
    config: RunConfig
    cluster: str  # "slurm" or "local"
    resources: Resources
    options: ClusterOptions
    env: tuple[tuple[str, str], ...]
    requested_method: str
    notes: tuple[str, ...] = field(default=())
    devices: DeviceMap | None = None  # each rank's GPU, decided here before launch (refit_core/planning/devices.py)

    def __post_init__(self) -> None:
        # the run's name becomes a directory name, the SLURM job name and script text
        safety.name("run name (--name)", self.name)
        cfg = self.config
        safety.name("config name", cfg.name)
        safety.script_text("use_case", cfg.use_case)
        safety.script_text("description", cfg.description)

    @property
    def job_name(self) -> str:
        return self.options.job_name or f"refit-{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "cluster": self.cluster, "resources": asdict(self.resources),
            "options": self.options.to_json(), "env": dict(self.env), "requested_method": self.requested_method,
            "method": self.config.run.method, "notes": list(self.notes),
            "devices": None if self.devices is None else self.devices.to_json(),
        }


def parse_time(text: str) -> int:
    """Seconds from SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    t = safety.script_text("--time", text, spaces=False, limit=32)  # as given: "30\n" is refused, not stripped
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t, re.ASCII)
    if not m:
        raise ConfigError(f"--time {text!r} is not a SLURM time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        h, mi, s = (nums + [0, 0])[:3]
        secs = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(nums) == 1:
        secs = nums[0] * 60
    elif len(nums) == 2:
        secs = nums[0] * 60 + nums[1]
    else:
        secs = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if secs <= 0:
        raise ConfigError(f"--time {text!r} must be more than zero")
    if secs > MAX_TIME_S:
        raise ConfigError(f"--time {text!r} is more than a year: give minutes (M), H:M:S or D-H:M:S")
    return secs


def sbatch_parameters(args: Sequence[str]) -> dict[str, Any]:
    """Extra sbatch options (`--constraint=h100`, `--requeue`) as a {name: value} mapping."""
    out: dict[str, Any] = {}
    for a in args:
        m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.*))?", safety.script_text("--sbatch-arg", a), re.DOTALL)
        if not m:
            raise ConfigError(f"--sbatch-arg {a!r}: write it as --name=value or --flag (e.g. --sbatch-arg=--constraint=h100)")
        out[m.group(1).replace("-", "_")] = True if m.group(2) is None else m.group(2)
    return out


def sbatch_extras(args: Sequence[str]) -> dict[str, Any]:
    """The extra sbatch options of a job, `--requeue` first unless the user said --requeue or --no-requeue:
    preempted or on a lost node, the job goes back in the queue and runs again (the refit restarts from
    scratch; the ranks record the restart count), even where the site's JobRequeue is 0. Both the
    submitted job (executor.slurm_parameters) and the rendered script (render.sbatch_lines) use it."""
    extra = sbatch_parameters(args)
    return extra if "no_requeue" in extra or "requeue" in extra else {"requeue": True, **extra}


def parse_env(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise ConfigError(f"--env {item!r}: write it as KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def job_env(environ: Mapping[str, str], extra: Sequence[tuple[str, str]], cpus_per_task: int | None,
            local_threads: int | None = None) -> tuple[tuple[str, str], ...]:
    """The environment every task gets: the thread count, then the user's forwarded variables, then --env
    (the safe defaults, refit_core/environment.py SAFE_ENV, are applied by each task itself)."""
    env: dict[str, str] = {}
    env["OMP_NUM_THREADS"] = str(local_threads or cpus_per_task or 1)
    env.update({k: v for k, v in sorted(environ.items()) if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES})
    env.update(dict(extra))
    return tuple(sorted(env.items()))


def effective_config(cfg: RunConfig, method_explicit: bool, gpus_available: bool) -> tuple[RunConfig, str | None]:
    """Without GPUs, a GPU method the user did not ask for by flag runs on gloo (with one line saying so);
    one asked for by flag is an error."""
    m = methods.method(cfg.run.method)
    if m.refusal:
        raise ConfigError(m.refusal)  # whatever the machine
    if not m.needs_cuda or gpus_available:
        return cfg, None
    if method_explicit or m.cpu_fallback is None:
        raise ConfigError(f"--refit-method {cfg.run.method} needs CUDA GPUs and none is available here: "
                          f"use --refit-method {m.cpu_fallback or 'gloo'}, or leave the flag out to fall back to it")
    note = (f"no CUDA GPU available: running {cfg.name} with {m.cpu_fallback} on the CPU instead of {cfg.run.method} "
            f"(on GPUs it runs {cfg.run.method})")
    return cfg.with_changes(method=m.cpu_fallback), note


def fallback_on_nodes(cfg: RunConfig, cluster: "Cluster", method_explicit: bool) -> bool:
    """On a cluster whose ranks run elsewhere (SLURM) the GPUs requested are not known to be CUDA GPUs until
    the job runs (a test cluster's are fake): a config's own GPU method (not asked for by flag) may fall back
    there as it does on this host, decided on the nodes (jobs/refit_job.py, DeviceMap.fallback_without_gpu in
    devices.json); one asked for by flag still fails."""
    m = methods.method(cfg.run.method)
    return not (cluster.on_this_host or method_explicit or not m.needs_cuda or m.cpu_fallback is None)


@dataclass(frozen=True)
class HostMemory:
    """This machine's memory in bytes (/proc/meminfo's MemAvailable and MemTotal)."""

    available: int
    total: int


def check_host_memory(cfg: RunConfig, host: HostMemory) -> None:
    """A local CPU run's ranks are processes on this machine: their shards and buffers together must fit in
    its available memory (not in --gpu-memory-gb). Raises a one-line ConfigError if they do not."""
    fit = cfg.memory_fit()
    need = sum(m.total for m in fit.per_rank)
    if need <= host.available:
        return
    busiest = fit.busiest
    raise ConfigError(
        f"the {cfg.hardware.gpus} ranks of this local {cfg.run.method} run need {need / GIB:.2f} GiB of memory together "
        f"(rank {busiest.rank}: {busiest.total / GIB:.2f} GiB), but this machine has {host.available / GIB:.2f} GiB "
        f"available ({host.total / GIB:.2f} GiB in all): use a smaller model, a smaller --refit-bucket-size, "
        "or a cluster (--cluster slurm)")


def make_spec(name: str, cfg: RunConfig, cluster: "Cluster", opts: ClusterOptions, environ: Mapping[str, str],
              method_explicit: bool, facts: "Facts") -> RunSpec:
    """Decide everything about one run on `cluster` (orchestrator/submission/clusters.py), given the `facts` of
    the machine it is decided for (pure: the same inputs give the same spec).

    The ranks are placed on the GPUs a node shows its tasks (`facts.node_gpus`; None: the GPUs requested per
    node) here (refit_core/planning/devices.py), so a layout the method cannot run there is refused before
    anything is launched. A CPU run whose ranks all live on this host is checked against its memory
    (`facts.host`), every other run against --gpu-memory-gb."""
    requested = cfg.run.method
    cfg, note = effective_config(cfg, method_explicit, facts.gpus_available)
    on_host = cluster.on_this_host and not methods.method(cfg.run.method).needs_cuda
    cfg.validate(gpu_memory=not on_host)
    refusal = execution_refusal(cfg.run.inference_precision, cfg.run.method)
    if refusal:
        raise ConfigError(refusal)
    if on_host and facts.host is not None:
        check_host_memory(cfg, facts.host)
    res = cluster.resources(cfg.hardware.gpus, cfg.hardware.gpus_per_node, opts)
    gpus = res.gpus_per_node if facts.node_gpus is None else facts.node_gpus
    dmap = assign_devices(cfg.world(), cfg.run.method, res.tasks_per_node, gpus)
    if fallback_on_nodes(cfg, cluster, method_explicit):
        dmap = dataclasses.replace(dmap, fallback_without_gpu=True)
    threads = max(1, facts.cpus // res.tasks) if cluster.on_this_host else None
    env = job_env(environ, opts.env, opts.cpus_per_task, threads)
    notes = tuple(n for n in (note, dmap.note) if n)
    return RunSpec(name, cfg, cluster.name, res, opts, env, requested, notes, dmap)
