"""The one module that talks to submitit: submitting runs (SLURM or local) and the facts of this machine.

Everything else sees RunSpecs, run directories and the job references returned here; which cluster a run
goes to is a class (orchestrator/submission/clusters.py), which calls `submit_slurm` or `submit_local`.

SLURM: `submitit.SlurmExecutor` writes the sbatch script and submits it; several runs of the same
shape go as one job array. Tasks are launched by `srun --kill-on-bad-exit=1`, so one failing rank
ends the job at once.

Local: submitit's LocalExecutor, adapted where it does not fit a benchmark a user watches and detaches from
(submitit is pinned to 1.5.4, whose local protocol this follows): its controller is refitctl's
(`python -m orchestrator.controller FOLDER`, orchestrator/controller.py), started in a new session, so Ctrl-C
in the terminal reaches refitctl only and the job keeps running; it leaves CUDA_VISIBLE_DEVICES as the user
has it (submitit would hide every GPU unless told how many); several runs submitted together form a local
"array": one controller runs them one after another.

Each task runs `jobs.submitit_task.run_task(run_dir, env)`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import submitit
from submitit.core import utils as submitit_utils
from submitit.local.local import LocalExecutor, LocalJob

from jobs.submitit_task import run_task
from orchestrator.submission.runspec import HostMemory, RunSpec, sbatch_extras
from refit_core import environment
from refit_core.errors import RefitError


@dataclass(frozen=True)
class JobRef:
    """A submitted run: enough to ask about it, cancel it and find its files from any process."""

    cluster: str
    job_id: str
    folder: str  # submitit's folder
    submitted: float
    controller_pid: int | None = None  # local runs

    def to_json(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "job_id": self.job_id, "folder": self.folder,
                "submitted": self.submitted, "controller_pid": self.controller_pid}


# ----------------------------------------------------------------------------- this machine

def local_gpu_count() -> int:
    """CUDA GPUs this machine's torch can use (0 without an NVIDIA device: torch is not even imported)."""
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def host_memory() -> HostMemory:
    """This machine's available and total memory (/proc/meminfo; elsewhere the physical pages, twice)."""
    try:
        info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines() if ":" in ln)
        total = int(info["MemTotal"].split()[0]) * 1024
        return HostMemory(int(info.get("MemAvailable", info["MemTotal"]).split()[0]) * 1024, total)
    except (OSError, KeyError, ValueError, IndexError):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return HostMemory(total, total)


# ----------------------------------------------------------------------------- submission

def submit_local(specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[JobRef]:
    """One local controller runs the runs one after another, whatever their size."""
    folder.mkdir(parents=True, exist_ok=True)
    ex = _LocalArrayExecutor(folder, run_dirs=[d.resolve() for d in run_dirs], tasks=[s.resources.tasks for s in specs],
                             time_limit_s=specs[0].resources.time_limit_s)
    t = time.time()
    jobs = ex.submit_runs(_task_args(specs, run_dirs))
    return [JobRef("local", j.job_id, str(folder.resolve()), t, ex.controller_pid) for j in jobs]


def submit_slurm(specs: Sequence[RunSpec], run_dirs: Sequence[Path], folder: Path) -> list[JobRef]:
    """One job, or one job array: the runs must share one shape (resources, partition, account, qos, ...)."""
    if len({shape(s) for s in specs}) != 1:
        raise ValueError("a SLURM array needs runs of one shape; group them with shape() first")
    folder.mkdir(parents=True, exist_ok=True)
    args = _task_args(specs, run_dirs)
    ex = submitit.SlurmExecutor(folder=folder)
    ex.update_parameters(**slurm_parameters(specs[0], len(specs)))
    t = time.time()
    try:  # submitit prints sbatch's stderr on failure; the error below says it in one line
        with submitit.helpers.clean_env(), contextlib.redirect_stderr(io.StringIO()):
            if len(args) == 1:
                jobs = [ex.submit(run_task, *args[0])]
            else:
                with ex.batch():
                    jobs = [ex.submit(run_task, *a) for a in args]
    except submitit_utils.FailedJobError as e:
        raise RefitError(f"sbatch refused the job: {_last_line(str(e))} (compare --partition, --gpus-per-node, "
                         "--nodes and --time with what `sinfo` shows)") from None
    except subprocess.CalledProcessError as e:
        raise RefitError(f"sbatch failed: {_last_line(str(e.output or e))}") from None
    return [JobRef("slurm", str(j.job_id), str(folder.resolve()), t) for j in jobs]


def _task_args(specs: Sequence[RunSpec], run_dirs: Sequence[Path]) -> list[tuple[str, dict[str, str]]]:
    return [(str(d.resolve()), dict(s.env)) for s, d in zip(specs, run_dirs)]


def stop_controllers(pids: set[int], wait_s: float = 15.0) -> bool:
    """SIGTERM to local controllers (each stops its ranks) and wait until they are gone; whether they are."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if not _reaped(p)}
        time.sleep(0.05)
    return not pids


def _reaped(pid: int) -> bool:
    """The process has exited (reaped here when it is this process's child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        try:
            os.kill(pid, 0)
            return False
        except OSError:
            return True


def shape(spec: RunSpec) -> tuple[Any, ...]:
    """Runs with equal shapes can share one SLURM job array."""
    o = spec.options
    return (spec.cluster, spec.resources, o.partition, o.account, o.qos, o.cpus_per_task, o.exclusive,
            o.sbatch_args, o.srun_args, o.job_name)


def slurm_parameters(spec: RunSpec, array_size: int = 1) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for a run (or an array of runs of its shape)."""
    r, o = spec.resources, spec.options
    limit_min = max(1, math.ceil(r.time_limit_s / 60))  # SLURM counts time limits in minutes
    params: dict[str, Any] = {
        "job_name": o.job_name or (spec.job_name if array_size == 1 else "refit-sweep"),
        "nodes": r.nodes, "ntasks_per_node": r.tasks_per_node, "time": limit_min,
        # submitit's own pre-timeout signal: the tasks log it and carry on (see run_task)
        "signal_delay_s": min(90, max(5, r.time_limit_s // 10)),
        "stderr_to_stdout": True,
        "setup": ['if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi'],
        "srun_args": ["--kill-on-bad-exit=1", *o.srun_args],
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    for key in ("partition", "account", "qos", "cpus_per_task"):
        if getattr(o, key) is not None:
            params[key] = getattr(o, key)
    if o.exclusive:
        params["exclusive"] = True
    params["additional_parameters"] = sbatch_extras(o.sbatch_args)
    if array_size > 1:
        params["array_parallelism"] = array_size
    return params


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if "error" in ln.lower()]
    return (errs or lines or ["(no output)"])[-1]


class _LocalArrayExecutor(LocalExecutor):
    """submitit's LocalExecutor with refitctl's controller (see the module docstring)."""

    def __init__(self, folder: Path, run_dirs: Sequence[Path], tasks: Sequence[int], time_limit_s: int) -> None:
        super().__init__(folder)
        self.run_dirs = list(run_dirs)
        self.tasks = list(tasks)
        self.time_limit_s = time_limit_s
        self.controller_pid: int | None = None

    def submit_runs(self, args: Sequence[tuple[str, dict[str, str]]]) -> list[LocalJob]:
        subs = [submitit_utils.DelayedSubmission(run_task, *a) for a in args]
        folder = submitit_utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickles = []
        for d in subs:
            p = folder / f"{uuid.uuid4().hex}.pkl"
            d.set_timeout(self.time_limit_s / 60, self.max_num_timeout)
            d.dump(p)
            pickles.append(p)
        proc = self._start_controller()
        self.controller_pid = proc.pid
        ids = [str(proc.pid)] if len(subs) == 1 else [f"{proc.pid}_{i}" for i in range(len(subs))]
        jobs = [LocalJob(folder=self.folder, job_id=i, tasks=list(range(n)), process=proc)
                for i, n in zip(ids, self.tasks)]
        for job, p in zip(jobs, pickles):
            job.paths.move_temporary_file(p, "submitted_pickle")
        return jobs

    def _start_controller(self) -> "subprocess.Popen[bytes]":
        env = environment.child_environment(dict(
            SUBMITIT_LOCAL_NTASKS=str(self.tasks[0]),
            SUBMITIT_LOCAL_COMMAND=self._submitit_command_str,
            SUBMITIT_LOCAL_TIMEOUT_S=str(int(self.time_limit_s)),
            SUBMITIT_LOCAL_SIGNAL_DELAY_S="0",
            SUBMITIT_LOCAL_NODEID="0",
            SUBMITIT_LOCAL_JOB_NUM_NODES="1",
            SUBMITIT_STDERR_TO_STDOUT="1",
            SUBMITIT_EXECUTOR="local",
            SUBMITIT_LOCAL_WITH_SHELL="",
            REFITCTL_LOCAL_RUNS=json.dumps([[str(d), n] for d, n in zip(self.run_dirs, self.tasks)]),
        ), drop=("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
        log = open(self.folder / "controller.log", "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "orchestrator.controller", str(self.folder)], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()
