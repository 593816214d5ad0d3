"""The process environment: the one module of refitctl that reads or writes `os.environ`.

A run is configured by data (config.json, written once when the run is resolved); the environment
carries only what cannot travel that way:

- a task's place in its job (`TaskEnv`: rank, world size, local rank, master address and port), which
  its launcher (srun, submitit, torchrun, jobs/supervisor.py) gives it; `task_env()` reads it once;
- a site's defaults and a user's overrides (`SETTINGS`, all named REFITCTL_*), read once by the
  orchestrator where a run is resolved, then part of its config;
- what libraries read from it (NCCL_*, NVSHMEM_*, MASTER_ADDR for torch.distributed): `export()`;
- `SAFE_ENV`: NVLink multicast off unless the user says (it can take a shared host's GPUs out of
  service), applied by `apply_safe_defaults()` in every task, the one place it is applied.

Also the few facts every launcher shares: `master_port(job_id)`, `free_port()`, `rank_log_name(rank)`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Mapping

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}

DEFAULT_MASTER_PORT = 29500  # torch.distributed's default, when there is no job id to derive one from

# refitctl's own variables: what each sets. The run settings among them become RunConfig fields when a run is
# resolved (refit_core/config.py ENV_OVERRIDES); the rest are a site's defaults or a launcher's notes to its tasks.
SETTINGS: dict[str, str] = {
    "REFITCTL_CLUSTER": "default --cluster",
    "REFITCTL_PARTITION": "default --partition",
    "REFITCTL_ACCOUNT": "default --account",
    "REFITCTL_QOS": "default --qos",
    "REFITCTL_TIME": "default --time",
    "REFITCTL_RUNS_DIR": "default --runs-dir",
    "REFITCTL_CEILINGS": "default --ceilings",
    "REFITCTL_NVSHMEM_PLACEMENT": "--nvshmem-placement (overrides the config)",
    "REFITCTL_NVSHMEM_SYNC": "--nvshmem-sync (overrides the config)",
    "REFITCTL_STAGED_ZERO_COPY": "--staged-zero-copy on|off (overrides the config)",
    "REFITCTL_STAGED_DIRECT_MIN_BYTES": "--staged-direct-min-bytes (overrides the config)",
    "REFITCTL_MEGATRON_UNPATCHED": "--megatron-unpatched (overrides the config)",
    "REFITCTL_FAULT": "test-only fault injection, per task (refit_core/execution/faults.py)",
    "REFITCTL_MASTER_PORT": "the local controller's rendezvous port, to its tasks",
    "REFITCTL_LOCAL_RUNS": "the runs a local controller runs, to the controller",
}


LOCAL_RUNS = "REFITCTL_LOCAL_RUNS"
"""[[run_dir, tasks], ...] as JSON in a local controller's environment, so in every rank's it starts: what tells
`refitctl cancel` that a recorded process really is a rank of the run (orchestrator/state/jobstate.py)."""
LOCAL_RANK_ID = "SUBMITIT_LOCAL_GLOBALID"  # the rank number the local controller gives each task it starts


def get(name: str) -> str | None:
    """The variable `name`, or None when it is unset or empty (an empty value means "not set" everywhere)."""
    value = os.environ.get(name)
    return value if value else None


def snapshot() -> dict[str, str]:
    """A copy of the whole environment now: what a resolver or a launcher filters, never mutates."""
    return dict(os.environ)


def export(values: Mapping[str, str], overwrite: bool = True) -> None:
    """Set variables in this process for the libraries that read them (torch.distributed, NCCL, NVSHMEM);
    `overwrite=False` keeps what the user set."""
    for k, v in values.items():
        if overwrite:
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)


def apply_safe_defaults() -> None:
    """`SAFE_ENV` where the user did not say otherwise: the one place it is applied, in every task."""
    export(SAFE_ENV, overwrite=False)


def child_environment(extra: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for a child process: this one, less `drop`, plus `extra` (a launcher's)."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class TaskEnv:
    """A task's place in its job, as its launcher gives it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    local_world_size: int | None = None  # tasks on this node, where the launcher says
    restarts: int = 0  # SLURM_RESTART_COUNT: how often the job was requeued before this attempt
    fault: str = ""  # REFITCTL_FAULT for this task (tests only)
    visible_devices: str = "unset"  # CUDA_VISIBLE_DEVICES, for messages


def _first(*names: str) -> str | None:
    for n in names:
        if (v := get(n)) is not None:
            return v
    return None


def _leading_int(text: str | None) -> int | None:
    """SLURM writes tasks per node as "4(x2)": the leading number."""
    digits = (text or "")[: len(text or "") - len((text or "").lstrip("0123456789"))]
    return int(digits) if digits else None


def _slurm_first_host() -> str | None:
    nodes = get("SLURM_JOB_NODELIST")
    if not nodes:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


def task_env() -> TaskEnv:
    """This task's place, from the first of: RANK / WORLD_SIZE / LOCAL_RANK (torchrun, jobs/supervisor.py),
    then SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (srun). MASTER_ADDR defaults to the first host of
    SLURM_JOB_NODELIST, else 127.0.0.1; MASTER_PORT to `master_port(SLURM_JOB_ID)`."""
    addr = _first("MASTER_ADDR") or _slurm_first_host() or "127.0.0.1"
    port = _first("MASTER_PORT")
    return TaskEnv(int(_first("RANK", "SLURM_PROCID") or 0), int(_first("WORLD_SIZE", "SLURM_NTASKS") or 1),
                   int(_first("LOCAL_RANK", "SLURM_LOCALID") or 0), addr,
                   int(port) if port is not None else master_port(get("SLURM_JOB_ID") or ""),
                   _leading_int(_first("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE")),
                   int(get("SLURM_RESTART_COUNT") or 0), get("REFITCTL_FAULT") or "",
                   os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))


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
