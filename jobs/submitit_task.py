"""The entry point of every task of a job submitted through submitit (SLURM, or refitctl's local controller).

`run_task(run_dir, env)` takes the task's place from `submitit.JobEnvironment()` and hands it to the job as a
typed `TaskEnv` (it exports no RANK / WORLD_SIZE for the job to read back), exports the job's environment for
the libraries that read it (NCCL_*, NVSHMEM_*: `env`, from the run's spec), sends its output to
RUN_DIR/logs/rank-NNNNN.log and runs `jobs.refit_job.run`. The rendezvous: the local controller names a free
port (REFITCTL_MASTER_PORT) for tasks that all live on this host; on SLURM every task derives the same port
from the job id and meets on the first node. (Not submitit's TorchDistributedEnvironment: that narrows
CUDA_VISIBLE_DEVICES to one GPU per rank, which breaks several NVSHMEM PEs sharing a GPU.)
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import submitit

from refit_core import environment
from refit_core.environment import TaskEnv, master_port, rank_log_name
from refit_core.paths import LOGS_DIR


class JobTerminated(BaseException):
    """SIGTERM reached the task: the job was cancelled or reached its time limit."""


def task_place(job: Any) -> TaskEnv:
    """This task's place in its job, from submitit's JobEnvironment."""
    nodes = max(1, job.num_nodes)
    local_port = environment.get("REFITCTL_MASTER_PORT")  # set by the local controller: every task is here
    addr, port = ("127.0.0.1", int(local_port)) if local_port else (job.hostnames[0], master_port(job.raw_job_id))
    base = environment.task_env()  # the restart count, a test's fault, CUDA_VISIBLE_DEVICES
    return TaskEnv(job.global_rank, job.num_tasks, job.local_rank, addr, port, job.num_tasks // nodes,
                   base.restarts, base.fault, base.visible_devices)


def run_task(run_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """Entry point of every task of a refit job (pickled by submitit, run on the nodes)."""
    job = submitit.JobEnvironment()
    environment.export(env)
    task = task_place(job)
    _redirect_output(Path(run_dir) / LOGS_DIR / rank_log_name(task.rank))
    signal.signal(submitit.JobEnvironment._usr_sig(), _log_signal)
    signal.signal(signal.SIGTERM, _terminate)
    print(f"refitctl: rank {task.rank} of {task.world_size}, node {job.node} of {max(1, job.num_nodes)} "
          f"({socket.gethostname()}), {job.cluster} job {job.job_id}; master {task.master_addr}:{task.master_port}",
          flush=True)
    from jobs.refit_job import run

    record = run(run_dir, task)
    if not record.verified:
        raise RuntimeError(f"rank {task.rank} finished without verifying its destination bytes")
    atexit.register(_exit_fast, job.paths.result_pickle)
    return {"rank": task.rank, "verified": True}


def _exit_fast(result_pickle: Path) -> None:
    """After success (submitit's result written), skip torch's interpreter teardown: seconds per process
    on a busy machine, with nothing left to save."""
    if result_pickle.exists():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _redirect_output(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _log_signal(signum: int, frame: Any) -> None:
    # submitit would requeue or give up here; the scheduler's own time limit decides instead
    print(f"refitctl: got {signal.Signals(signum).name}: the time limit or a preemption is near", flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise JobTerminated("received SIGTERM: the job was cancelled or reached its time limit")
