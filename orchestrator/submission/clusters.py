"""Where runs go: a cluster is a class (as submitit's executors are), never a string compared across the tree.

Each cluster answers what a run gets there and how it starts: the facts of the machine a run is decided on
(GPUs, memory, CPUs: `facts`), the resources to ask for (`resources`: nodes x tasks per node, GPUs, time),
whether a run can ever fit (`misfit`), how runs submitted together are grouped (`batches`), how to submit
them (`submit`, through orchestrator/submission/executor.py, the one module that talks to submitit) and how
often a watcher polls. Both start their ranks under one supervisor: srun's `--kill-on-bad-exit` on SLURM,
jobs/supervisor.py (through the local controller, orchestrator/controller.py) here.

`detect(requested)` picks one for --cluster auto / slurm / local; `get(name)` finds the one a run.json names.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from orchestrator.submission import executor, slurm_fit
from orchestrator.submission.runspec import ClusterOptions, HostMemory, Resources, RunSpec, parse_time
from refit_core.errors import ConfigError


@dataclass(frozen=True)
class Facts:
    """What the machine a run is decided for shows its tasks: GPUs per node (None: the GPUs requested), whether
    any CUDA GPU is there, this host's memory (runs on this host only) and CPUs."""

    node_gpus: int | None
    gpus_available: bool
    host: HostMemory | None
    cpus: int


class Cluster:
    """One kind of place runs go; subclasses say how (class attributes are what views and watchers show)."""

    name: ClassVar[str]  # recorded in run.json (`job.cluster`, `spec.cluster`)
    label: ClassVar[str]  # "SLURM", "local processes"
    poll_s: ClassVar[float]  # default seconds between status checks while a run is watched
    on_this_host: ClassVar[bool]  # every rank runs on this machine (its memory holds them all)
    grouping: ClassVar[str]  # how runs submitted together run: "; one job array", "; one run after another"

    def facts(self, opts: ClusterOptions) -> Facts:
        raise NotImplementedError

    def resources(self, world: int, gpus_per_node: int, opts: ClusterOptions) -> Resources:
        raise NotImplementedError

    def misfit(self, spec: RunSpec) -> str | None:
        """Why this cluster can never run `spec`, or None (also when it cannot tell)."""
        return None

    def batches(self, specs: Sequence[RunSpec]) -> list[list[int]]:
        """Indices of runs submitted together as one job (or array)."""
        return [list(range(len(specs)))]

    def submit(self, specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[executor.JobRef]:
        raise NotImplementedError

    def withdraw(self, refs: Sequence[executor.JobRef]) -> str:
        """Stop jobs just submitted whose ids could not be recorded (nobody could follow or cancel them);
        returns what was done, in words (issue 25, item 1)."""
        raise NotImplementedError


class LocalCluster(Cluster):
    """Every rank a process on this machine, under refitctl's local controller."""

    name, label, poll_s, on_this_host, grouping = "local", "local processes", 1.0, True, "; one run after another"

    def facts(self, opts: ClusterOptions) -> Facts:
        gpus = executor.local_gpu_count()
        return Facts(gpus, bool(gpus), executor.host_memory(), os.cpu_count() or 1)

    def resources(self, world: int, gpus_per_node: int, opts: ClusterOptions) -> Resources:
        if opts.nodes not in (None, 1):
            raise ConfigError(f"--nodes {opts.nodes}: the local executor runs every rank on this machine; "
                              "use --cluster slurm for several nodes")
        if opts.tasks_per_node not in (None, world):
            raise ConfigError(f"--tasks-per-node {opts.tasks_per_node}: locally all {world} ranks run here; drop the option")
        return Resources(1, world, 0, parse_time(opts.time))

    def submit(self, specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[executor.JobRef]:
        return executor.submit_local(specs, run_dirs, folder)

    def withdraw(self, refs: Sequence[executor.JobRef]) -> str:
        """SIGTERM to the controller (it stops its ranks), waited for."""
        gone = executor.stop_controllers({r.controller_pid for r in refs if r.controller_pid})
        what = ", ".join(f"local job {r.job_id}" for r in refs)
        return f"{what} was stopped, nothing runs" if gone else f"{what} was sent SIGTERM"


class SlurmCluster(Cluster):
    """sbatch through submitit; srun starts the tasks, one job array for runs of one shape."""

    name, label, poll_s, on_this_host, grouping = "slurm", "SLURM", 3.0, False, "; one job array"

    def facts(self, opts: ClusterOptions) -> Facts:
        return Facts(None, opts.request_gpus, None, 1)

    def resources(self, world: int, gpus_per_node: int, opts: ClusterOptions) -> Resources:
        tpn = opts.tasks_per_node or (min(world, gpus_per_node) if opts.nodes is None else math.ceil(world / opts.nodes))
        nodes = opts.nodes or math.ceil(world / tpn)
        if nodes * tpn != world:
            raise ConfigError(
                f"{nodes} nodes x {tpn} tasks per node = {nodes * tpn} tasks, but the config's world is {world} ranks "
                "(--gpus): choose --nodes/--tasks-per-node whose product is the world size")
        return Resources(nodes, tpn, gpus_per_node if opts.request_gpus else 0, parse_time(opts.time))

    def misfit(self, spec: RunSpec) -> str | None:
        """What `sinfo` says about the partition: too few nodes, GPUs, CPUs or time (orchestrator/submission/slurm_fit.py)."""
        nodes = slurm_fit.query_nodes()
        if not nodes:
            return None
        r, o = spec.resources, spec.options
        req = slurm_fit.Request(r.nodes, r.tasks_per_node, o.cpus_per_task or 1, r.gpus_per_node, r.time_limit_s,
                                o.partition)
        return slurm_fit.misfit(req, nodes)

    def batches(self, specs: Sequence[RunSpec]) -> list[list[int]]:
        by_shape: dict[tuple[object, ...], list[int]] = {}
        for i, s in enumerate(specs):
            by_shape.setdefault(executor.shape(s), []).append(i)
        return list(by_shape.values())

    def submit(self, specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[executor.JobRef]:
        return executor.submit_slurm(specs, run_dirs, folder)

    def withdraw(self, refs: Sequence[executor.JobRef]) -> str:
        """scancel of the jobs."""
        ids = [r.job_id for r in refs]
        try:
            ok = subprocess.run(["scancel", *ids], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        return f"SLURM job(s) {', '.join(ids)} " + ("cancelled" if ok else "could not be cancelled: scancel them")


LOCAL = LocalCluster()
SLURM = SlurmCluster()
CLUSTERS: dict[str, Cluster] = {c.name: c for c in (LOCAL, SLURM)}


def get(name: str) -> Cluster:
    """The cluster a run.json names."""
    try:
        return CLUSTERS[name]
    except KeyError:
        raise ConfigError(f"unknown cluster {name!r} (known: {', '.join(CLUSTERS)})") from None


def detect(requested: str) -> tuple[Cluster, str]:
    """(the cluster, why) for --cluster auto / slurm / local."""
    if requested in CLUSTERS and requested != "slurm":
        return CLUSTERS[requested], f"--cluster {requested}"
    has_sbatch = shutil.which("sbatch") is not None
    if requested == "slurm":
        if not has_sbatch:
            raise ConfigError("--cluster slurm: sbatch is not on PATH; run on a SLURM login node or use --cluster local")
        return SLURM, "--cluster slurm"
    if not has_sbatch:
        return LOCAL, "no sbatch on PATH"
    try:
        ok = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        return LOCAL, "sbatch is installed but SLURM does not answer (sinfo failed)"
    return SLURM, "sbatch found and SLURM answers"
