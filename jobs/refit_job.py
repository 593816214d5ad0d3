"""What each task of a refit job runs, wherever it was launched (srun, submitit, torchrun, local).

`run(run_dir)` reads `run_dir/config.json`, joins the process group, runs this rank's share of
the refit and appends to `run_dir/ranks/rank-NNNNN.jsonl` after every iteration (what changed only:
refit_core.results.RankRecordWriter). Rank 0 writes `run_dir/results.json` at the end.

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
from typing import TYPE_CHECKING, Any, Callable

from refit_core.taskenv import SAFE_ENV, master_port

if TYPE_CHECKING:
    from refit_core.results import RankRecord


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
    return TaskEnv(int(rank or 0), int(world or 1), int(local or 0), addr,
                   int(port) if port is not None else master_port(os.environ.get("SLURM_JOB_ID", "")))


def run(run_dir: str | os.PathLike[str]) -> "RankRecord":
    """Run this task's part of the refit described by run_dir/config.json; returns its record.

    Every error from here on, wherever it is raised, lands in the rank's record (`error`), and every
    wait is a phase of the rank's watchdog (refit_core/execution/watchdog.py), bounded by --refit-timeout.
    Idle ranks take no GPU and join no process group: they record themselves done and return."""
    from refit_core.results import RankRecord, RankRecordWriter, rank_path, write_json_atomic

    t0 = time.monotonic()
    env = task_env()

    def log(msg: str) -> None:
        print(f"[rank {env.rank} +{time.monotonic() - t0:7.2f}s] {msg}", flush=True)

    run_path = Path(run_dir)
    # A requeued job (preempted, node lost) starts again from scratch: its records replace the last attempt's.
    restarts = int(_first("SLURM_RESTART_COUNT") or 0)
    from refit_core.execution.watchdog import process_start_time

    writer = RankRecordWriter(rank_path(run_path, env.rank), started=process_start_time())  # "starting Python" since then
    record = RankRecord(env.rank, restarts=restarts)  # the rank's one record: the engine fills it in
    save = writer.save  # appends the new iterations and the changed fields: constant cost per iteration

    def record_error(error: str, tb: str | None = None) -> None:
        """Put `error` in the rank's record (its iterations stay), unless it has one already; safe from
        the watchdog's thread while the main thread writes."""
        writer.add_error(error, tb)

    save(record)
    from jobs.procs import record_process

    watchdog = None
    dist = None
    try:
        record_process(run_path, env.rank)
        for k, v in SAFE_ENV.items():
            os.environ.setdefault(k, v)
        from refit_core.config import RunConfig
        from refit_core.execution.watchdog import Watchdog

        cfg = RunConfig.from_json(json.loads((run_path / "config.json").read_text())).with_environment(os.environ)
        watchdog = Watchdog(cfg.timeout_s, env.rank, record_error, on_phase=writer.enter_phase)  # phases in the record
        watchdog.arm("start-up (imports, plan)")
        world = cfg.world()
        record.role = world.role(env.rank) if env.rank < cfg.gpus else "?"
        save(record)
        if env.rank == 0:
            (run_path / "results.json").unlink(missing_ok=True)
        if restarts:
            log(f"attempt {restarts + 1}: the job was requeued {restarts} time(s); the refit starts again")
        if env.world_size != cfg.gpus:
            raise RuntimeError(f"job has {env.world_size} tasks but config {cfg.name} needs a world of {cfg.gpus}")
        from refit_core.execution.transports.registry import method

        m = method(cfg.method)
        # ranks that take part: the layouts' ranks, or the whole world for a method that needs every rank
        active = list(range(env.world_size if m.all_ranks else world.gpus_used))
        if env.rank not in active:
            record.verified = record.complete = True
            save(record)
            log("idle rank: no GPU, no process group; done")
            return record

        watchdog.arm("importing torch")
        import torch
        import torch.distributed as dist

        from refit_core.execution.engine import run_rank
        from refit_core.execution.faults import hooks_from_env
        from refit_core.planning.plan import plan_transfers
        from refit_core.results import aggregate

        cfg = fallback_without_gpu(cfg, torch, log)
        m = method(cfg.method)
        watchdog.arm("CUDA device set-up")
        device = rank_device(cfg, env.rank, torch)
        backend = m.backend
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = env.master_addr, str(env.master_port)
        hooks = hooks_from_env(env.rank, log)
        watchdog.arm(f"process-group init ({backend}" + (", NCCL communicator" if backend == "nccl" else "") + ")")
        hooks.before("init")
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=env.rank, world_size=len(active), timeout=timeout,
                                init_method=f"tcp://{env.master_addr}:{env.master_port}", **kwargs)
        # set-up and the end wait on the CPU: gloo, with the same timeout
        cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
        log(f"process group ready: {backend}, rank {env.rank} of {len(active)} active ranks "
            f"({env.world_size - len(active)} idle), device {device}")
        watchdog.arm("plan")
        plan = cfg.plan(world=world)
        log(f"plan ready: {len(plan.transfers)} transfers; role {world.role(env.rank)}")
        record = run_rank(cfg, env.rank, len(active), device, dist.group.WORLD, record, save, plan=plan,
                          setup_group=cpu_group, watchdog=watchdog, hooks=hooks)
        watchdog.arm("final barrier (every active rank done)")
        dist.barrier(group=cpu_group)
        log("all ranks done")
        if env.rank == 0:
            watchdog.arm("results")
            summary = aggregate(run_path, active, plan.delivered_bytes, plan.precision, plan.network_bytes)
            write_json_atomic(run_path / "results.json", summary)
        return record
    except BaseException as e:
        record_error(f"{e.__class__.__name__}: {e}", traceback.format_exc())
        raise
    finally:
        if watchdog is not None and dist is not None:
            watchdog.arm("process-group teardown")
        if dist is not None:
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if watchdog is not None:
            watchdog.stop()
        writer.close()


def fallback_without_gpu(cfg: Any, torch: Any, log: Callable[[str], None]) -> Any:
    """A config's own GPU method on a node without CUDA (RunConfig.fallback_without_gpu, set for SLURM runs):
    its CPU fallback, said in the rank's log, as a local run decides before launch."""
    from refit_core.execution.transports.registry import method

    m = method(cfg.method)
    if not cfg.fallback_without_gpu or not m.needs_cuda or m.cpu_fallback is None or torch.cuda.is_available():
        return cfg
    log(f"no CUDA GPU on this node: running {cfg.name} with {m.cpu_fallback} on the CPU instead of {cfg.method} "
        f"(on GPUs it runs {cfg.method}; --refit-method {cfg.method} insists on it)")
    return cfg.with_changes(method=m.cpu_fallback, devices=(), ranks_per_node=0)


def rank_device(cfg: Any, rank: int, torch: Any) -> Any:
    """This rank's device: the GPU the run placed it on (config.json `devices`, refit_core/planning/devices.py), or the CPU."""
    from refit_core.planning.devices import assign_devices
    from refit_core.execution.transports.registry import method

    if not method(cfg.method).uses_gpus:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"--refit-method {cfg.method} needs CUDA GPUs; use --refit-method gloo on CPU")
    count = torch.cuda.device_count()
    placed = cfg.device_map()
    if placed is None:  # a config.json written without a placement: the same rules, this node's GPUs
        text = _first("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE") or ""
        digits = text[: len(text) - len(text.lstrip("0123456789"))]  # SLURM may say "4(x2)"
        per_node = int(digits) if digits else cfg.gpus
        placed = assign_devices(cfg.world(), cfg.method, per_node, count)
    index = placed.device(rank)
    if index is None or index >= count:
        raise RuntimeError(f"rank {rank} is placed on GPU {index} but this node shows {count} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): "
                           "submit again from where the job runs, or with --gpus-per-node set to the node's GPUs")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jobs.refit_job RUN_DIR", file=sys.stderr)
        return 2
    rec = run(args[0])
    return 0 if rec.verified else 1


if __name__ == "__main__":
    sys.exit(main())
