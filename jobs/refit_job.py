"""What each task of a refit job runs, wherever it was launched (srun, submitit, torchrun, local).

`run(run_dir)` reads `run_dir/config.json`, joins the process group, runs this rank's share of
the refit and keeps `run_dir/ranks/rank-NNNNN.json` current after every iteration. Rank 0 writes
`run_dir/results.json` at the end.

Rank, world size and local rank come from the first of: RANK / WORLD_SIZE / LOCAL_RANK
(torchrun, or submitit's TorchDistributedEnvironment export), then SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID (srun). MASTER_ADDR defaults to the first host of SLURM_JOB_NODELIST, else
127.0.0.1; MASTER_PORT to 20000 + SLURM_JOB_ID % 20000, else 29500.

Command line: `python -m jobs.refit_job RUN_DIR`.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Multicast over NVLink can take a shared host's GPUs out of service: off unless the user says.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "NVSHMEM_DISABLE_NVLS": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


@dataclass(frozen=True)
class TaskEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _first(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            return v
    return None


def task_env() -> TaskEnv:
    rank = _first("RANK", "SLURM_PROCID")
    world = _first("WORLD_SIZE", "SLURM_NTASKS")
    local = _first("LOCAL_RANK", "SLURM_LOCALID")
    addr = _first("MASTER_ADDR")
    if addr is None:
        nodes = os.environ.get("SLURM_JOB_NODELIST")
        addr = "127.0.0.1"
        if nodes:
            try:
                out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, timeout=10)
                addr = out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else addr
            except (OSError, subprocess.TimeoutExpired):
                pass
    port = _first("MASTER_PORT")
    if port is None:
        job = os.environ.get("SLURM_JOB_ID", "")
        port = str(20000 + int(job) % 20000) if job.isdigit() else "29500"
    return TaskEnv(int(rank or 0), int(world or 1), int(local or 0), addr, int(port))


def run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run this task's part of the refit described by run_dir/config.json; returns its record."""
    import torch
    import torch.distributed as dist

    from refit_core.config import RunConfig
    from refit_core.engine import run_rank
    from refit_core.plan import plan_transfers
    from refit_core.results import aggregate, rank_path, write_json_atomic

    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[rank {env.rank} +{time.monotonic() - t0:7.2f}s] {msg}", flush=True)

    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    run_path = Path(run_dir)
    cfg = RunConfig.from_json(json.loads((run_path / "config.json").read_text()))
    env = task_env()
    # A requeued job (preempted, node lost) starts again from scratch: its records replace the last attempt's.
    restarts = int(_first("SLURM_RESTART_COUNT") or 0)
    path = rank_path(run_path, env.rank)

    def save(rec: dict[str, Any]) -> None:
        rec["restarts"] = restarts
        write_json_atomic(path, rec)

    record: dict[str, Any] = {"rank": env.rank, "role": cfg.world().role(env.rank) if env.rank < cfg.gpus else "?",
                              "iterations": [], "verified": False, "complete": False, "error": None}
    save(record)
    if env.rank == 0:
        (run_path / "results.json").unlink(missing_ok=True)
    if restarts:
        log(f"attempt {restarts + 1}: the job was requeued {restarts} time(s); the refit starts again")
    if env.world_size != cfg.gpus:
        raise RuntimeError(f"job has {env.world_size} tasks but config {cfg.name} needs a world of {cfg.gpus}")
    cuda_methods = ("nccl", "nvshmem", "naive", "megatron-nccl")
    use_cuda = cfg.method in cuda_methods and torch.cuda.is_available()
    if cfg.method in cuda_methods and not torch.cuda.is_available():
        raise RuntimeError(f"--refit-method {cfg.method} needs CUDA GPUs; use --refit-method gloo on CPU")
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cfg.method in ("nccl", "megatron-nccl") else "gloo"
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.master_addr, str(env.master_port)
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout,
                            init_method=f"tcp://{env.master_addr}:{env.master_port}", **kwargs)
    log(f"process group ready: {backend}, rank {env.rank} of {env.world_size}, device {device}")
    plan = plan_transfers(cfg.inventory(), cfg.world())
    world = plan.world
    # Megatron-Core's refit uses the WORLD group: every rank takes part (idle ones with stub models)
    active = list(range(env.world_size if cfg.method.startswith("megatron-") else world.gpus_used))
    group = dist.new_group(active) if len(active) < env.world_size else dist.group.WORLD
    # Setup (filling weights) and the idle ranks' wait last as long as the run: their own group,
    # gloo, with a long timeout. A crashed peer still ends it at once (its connection closes).
    slow = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=12))
    slow_active = dist.new_group(active, backend="gloo", timeout=datetime.timedelta(hours=12)) \
        if len(active) < env.world_size else slow
    log(f"plan ready: {len(plan.transfers)} transfers; role {world.role(env.rank)}")
    try:
        if env.rank in active:
            record = run_rank(cfg, env.rank, env.world_size, device, group, save, plan=plan, setup_group=slow_active)
        else:
            record.update(verified=True, complete=True)  # idle: waits, builds nothing
            save(record)
        dist.barrier(group=slow)
        log("all ranks done")
        if env.rank == 0:
            summary = aggregate(run_path, active, plan.delivered_bytes)
            write_json_atomic(run_path / "results.json", summary)
        return record
    except BaseException as e:
        if path.exists():  # keep the iterations this rank already recorded
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                pass
        record["error"] = record.get("error") or f"{e.__class__.__name__}: {e}"
        record["traceback"] = traceback.format_exc()
        save(record)
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobs.refit_job RUN_DIR", file=sys.stderr)
        return 2
    rec = run(args[0])
    return 0 if rec.get("verified") else 1


if __name__ == "__main__":
    sys.exit(main())
