"""What every task of a refit run takes from, or adds to, its environment, in one place for the job
(jobs/), the launchers (jobs/local.py, orchestrator/submission/executor.py) and the benchmarks.

- `SAFE_ENV`: NVLink multicast off unless the user says (it can take a shared host's GPUs out of
  service); set by the orchestrator in every task's environment and by the job itself.
- `master_port(job_id)`: the rendezvous port of a SLURM job, the same on every node without talking.
- `free_port()`: a free port on this host, for a run whose ranks all live here.
- `rank_log_name(rank)`: the name of a rank's output file under RUN_DIR/logs, for every launcher.
"""

from __future__ import annotations

import socket

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}

LOCAL_RUNS = "REFITCTL_LOCAL_RUNS"
"""The local controller's runs ([[run_dir, tasks], ...] as JSON), in its environment and so in every rank's
it starts: what tells `refitctl cancel` that a recorded process really is a rank of the run (jobstate.py)."""
LOCAL_RANK_ID = "SUBMITIT_LOCAL_GLOBALID"  # submitit's local rank number, set by the controller for each task

DEFAULT_MASTER_PORT = 29500  # torch.distributed's default, when there is no job id to derive one from


def master_port(job_id: str) -> int:
    """The port every task of SLURM job `job_id` agrees on (20000..39999, from the numeric job id)."""
    return 20000 + int(job_id) % 20000 if job_id.isdigit() else DEFAULT_MASTER_PORT


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_log_name(rank: int) -> str:
    """`rank-00003.log`: a rank's output file, the same under every launcher (sorts by rank)."""
    return f"rank-{rank:05d}.log"
