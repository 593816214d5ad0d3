"""What each task of a refit job runs, wherever it was launched (srun, submitit, torchrun, local).

`run(run_dir, task)` reads the run's config (RUN_DIR/config.json) and its plan (RUN_DIR/plan.bin, made once
before submission: refit_core/planning/planfile.py), joins the process group, runs this rank's share of
the refit and appends to `RUN_DIR/ranks/rank-NNNNN.jsonl` after every iteration (what changed only:
refit_core.records.RankRecordWriter). Rank 0 writes `RUN_DIR/results.json` at the end. A rank reads no
setting from the environment: `task` (its rank, world and master address) comes from its launcher, or, for
`python -m jobs.refit_job RUN_DIR` under srun or torchrun, from refit_core/environment.py's `task_env()`.

Command line: `python -m jobs.refit_job RUN_DIR` (a task), `python -m jobs.refit_job --prepare RUN_DIR` (write
the plan file from config.json once, before the tasks start: what a hand-submitted sbatch script does).
"""

from __future__ import annotations

import datetime
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from refit_core import environment
from refit_core.environment import TaskEnv
from refit_core.paths import CONFIG_FILE, DEVICES_FILE, PLAN_FILE, RESULTS_FILE

if TYPE_CHECKING:
    from refit_core.config import RunConfig
    from refit_core.execution.watchdog import Watchdog
    from refit_core.planning.devices import DeviceMap
    from refit_core.planning.plan import Plan
    from refit_core.records import RankRecord

log = logging.getLogger(__name__)


def load_config(run_dir: Path) -> "RunConfig":
    """The run's config as the orchestrator resolved it (a damaged file is one RunDirError)."""
    from refit_core.config import RunConfig

    return RunConfig.read(run_dir / CONFIG_FILE)


def load_devices(run_dir: Path) -> "DeviceMap | None":
    """Each rank's GPU as the run placed them before launch (devices.json), or None where none was written."""
    from refit_core.errors import RunDirError
    from refit_core.jsonfile import DAMAGED, read_json
    from refit_core.planning.devices import DeviceMap

    path = run_dir / DEVICES_FILE
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    try:
        return None if data is None else DeviceMap.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(path, f"is not a device map ({e})", DAMAGED) from None


def load_plan(run_dir: Path) -> "Plan":
    """The plan made before submission: a rank never plans again."""
    from refit_core.planning.planfile import plan_from_bytes

    path = run_dir / PLAN_FILE
    return plan_from_bytes(path.read_bytes(), path)


def prepare(run_dir: Path) -> "Plan":
    """Write RUN_DIR/plan.bin from RUN_DIR/config.json (once per run, before its tasks start)."""
    from refit_core.jsonfile import write_bytes_atomic
    from refit_core.planning.planfile import plan_to_bytes

    plan = load_config(run_dir).plan()
    write_bytes_atomic(run_dir / PLAN_FILE, plan_to_bytes(plan))
    return plan


class _RankFormatter(logging.Formatter):
    """`[rank 3 +  12.05s] message`: the rank's log lines, with seconds since its job code started."""

    def __init__(self, rank: int, t0: float) -> None:
        super().__init__()
        self.rank, self.t0 = rank, t0

    def format(self, record: logging.LogRecord) -> str:
        return f"[rank {self.rank} +{time.monotonic() - self.t0:7.2f}s] {record.getMessage()}"


def _configure_logging(rank: int, t0: float) -> None:
    """Every module's logger (logging.getLogger(__name__)) writes to this task's stdout, its log file."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_RankFormatter(rank, t0))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _Rank:
    """One task's run, as named steps: record, load, join, refit, finish. Every error from the first step
    on lands in the rank's record (`error`), and every wait is a phase of the rank's watchdog
    (refit_core/execution/watchdog.py), bounded by --refit-timeout."""

    def __init__(self, run_dir: Path, task: TaskEnv) -> None:
        from refit_core.execution.watchdog import process_start_time
        from refit_core.records import RankRecord, RankRecordWriter, rank_path

        self.run_dir, self.task = run_dir, task
        _configure_logging(task.rank, time.monotonic())
        # "starting Python" since the process started; a requeued job's records replace the last attempt's
        self.writer: RankRecordWriter = RankRecordWriter(rank_path(run_dir, task.rank), started=process_start_time())
        self.record: RankRecord = RankRecord(task.rank, restarts=task.restarts)
        self.watchdog: Watchdog | None = None
        self.dist: Any = None
        self.hooks: Any = None  # the fault hooks (tests only), made with the process group
        self.devices: DeviceMap | None = None  # each rank's GPU, as placed before launch
        self.save(self.record)

    def save(self, record: "RankRecord") -> None:
        self.writer.save(record)  # appends the new iterations and the changed fields: constant cost per iteration

    def say(self, msg: str) -> None:
        log.info(msg)

    def record_error(self, error: str, tb: str | None = None) -> None:
        """Put `error` in the rank's record unless it has one already; safe from the watchdog's thread."""
        self.writer.add_error(error, tb)

    def load(self) -> tuple["RunConfig", list[int]]:
        """The config, the watchdog, this rank's role; the ranks that take part (the layouts' ranks, or the
        whole world for a method that needs every rank)."""
        from jobs.procs import record_process
        from refit_core.execution.watchdog import Watchdog
        from refit_core.planning.methods import method

        record_process(self.run_dir, self.task.rank)
        environment.apply_safe_defaults()
        cfg = load_config(self.run_dir)
        self.devices = load_devices(self.run_dir)
        self.watchdog = Watchdog(cfg.run.timeout_s, self.task.rank, self.record_error, on_phase=self.writer.enter_phase)
        self.watchdog.arm("start-up (imports, config)")
        world = cfg.world()
        self.record.role = world.role(self.task.rank) if self.task.rank < cfg.hardware.gpus else "?"
        self.save(self.record)
        if self.task.rank == 0:
            (self.run_dir / RESULTS_FILE).unlink(missing_ok=True)
        if self.task.restarts:
            self.say(f"attempt {self.task.restarts + 1}: the job was requeued {self.task.restarts} time(s); "
                     "the refit starts again")
        if self.task.world_size != cfg.hardware.gpus:
            raise RuntimeError(f"job has {self.task.world_size} tasks but config {cfg.name} needs a world of {cfg.hardware.gpus}")
        return cfg, list(range(self.task.world_size if method(cfg.run.method).all_ranks else world.gpus_used))

    def join(self, cfg: "RunConfig", active: list[int]) -> tuple[Any, Any]:
        """This rank's device and its process group (gloo beside nccl for set-up and the end)."""
        assert self.watchdog is not None
        self.watchdog.arm("importing torch")
        import torch
        import torch.distributed as dist

        from refit_core.planning.methods import method

        self.dist = dist
        self.watchdog.arm("CUDA device set-up")
        device = rank_device(cfg, self.devices, self.task, torch)
        backend, task = method(cfg.run.method).backend, self.task
        timeout = datetime.timedelta(seconds=cfg.run.timeout_s)
        self.watchdog.arm(f"process-group init ({backend}" + (", NCCL communicator" if backend == "nccl" else "") + ")")
        self.hooks.before("init")
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, rank=task.rank, world_size=len(active), timeout=timeout,
                                init_method=f"tcp://{task.master_addr}:{task.master_port}", **kwargs)
        cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
        self.say(f"process group ready: {backend}, rank {task.rank} of {len(active)} active ranks "
                 f"({task.world_size - len(active)} idle), device {device}")
        return device, cpu_group

    def refit(self, cfg: "RunConfig", active: list[int]) -> "Plan":
        """Join, load the plan, run the rank's iterations, wait for every active rank."""
        from refit_core.execution.engine import run_rank
        from refit_core.execution.faults import fault_hooks

        assert self.watchdog is not None
        self.hooks = fault_hooks(self.task.fault, self.task.rank, self.say)
        cfg = self.fallback_without_gpu(cfg)
        device, cpu_group = self.join(cfg, active)
        self.watchdog.arm("loading the plan")
        plan = load_plan(self.run_dir)
        self.say(f"plan loaded: {len(plan.transfers)} transfers; role {plan.world.role(self.task.rank)}")
        self.record = run_rank(cfg, plan, self.task.rank, len(active), device, self.dist.group.WORLD, self.record,
                               self.save, setup_group=cpu_group, watchdog=self.watchdog, hooks=self.hooks,
                               devices=self.devices, transport=payload_transport(cfg, plan))
        self.watchdog.arm("final barrier (every active rank done)")
        self.dist.barrier(group=cpu_group)
        self.say("all ranks done")
        return plan

    def fallback_without_gpu(self, cfg: "RunConfig") -> "RunConfig":
        """A config's own GPU method on a node without CUDA (devices.json's `fallback_without_gpu`, decided for
        runs on SLURM): its CPU fallback, said in the rank's log, as a run on this host decides before launch."""
        from refit_core.planning.methods import method

        m = method(cfg.run.method)
        if self.devices is None or not self.devices.fallback_without_gpu or not m.needs_cuda or m.cpu_fallback is None:
            return cfg
        assert self.watchdog is not None
        self.watchdog.arm("importing torch")
        import torch

        if torch.cuda.is_available():
            return cfg
        self.say(f"no CUDA GPU on this node: running {cfg.name} with {m.cpu_fallback} on the CPU instead of "
                 f"{cfg.run.method} (on GPUs it runs {cfg.run.method}; --refit-method {cfg.run.method} insists on it)")
        self.devices = None  # placed for the GPU method; the fallback runs on the CPU
        return cfg.with_changes(method=m.cpu_fallback)

    def finish(self, plan: "Plan", active: list[int]) -> None:
        """Rank 0: the run's results.json from every rank's record."""
        from refit_core.results import aggregate, write_json_atomic

        if self.task.rank != 0:
            return
        assert self.watchdog is not None
        self.watchdog.arm("results")
        summary = aggregate(self.run_dir, active, plan.delivered_bytes, plan.precision, plan.network_bytes)
        write_json_atomic(self.run_dir / RESULTS_FILE, summary)

    def close(self) -> None:
        if self.watchdog is not None and self.dist is not None:
            self.watchdog.arm("process-group teardown")
        if self.dist is not None and self.dist.is_initialized():
            try:
                self.dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if self.watchdog is not None:
            self.watchdog.stop()
        self.writer.close()


def run(run_dir: str | Path, task: TaskEnv | None = None) -> "RankRecord":
    """Run this task's part of the refit of `run_dir`; returns its record. Idle ranks take no GPU and join no
    process group: they record themselves done and return."""
    rank = _Rank(Path(run_dir), task or environment.task_env())
    try:
        cfg, active = rank.load()
        if rank.task.rank not in active:
            rank.record.verified = rank.record.complete = True
            rank.save(rank.record)
            rank.say("idle rank: no GPU, no process group; done")
            return rank.record
        plan = rank.refit(cfg, active)
        rank.finish(plan, active)
        return rank.record
    except BaseException as e:
        rank.record_error(f"{e.__class__.__name__}: {e}", traceback.format_exc())
        raise
    finally:
        rank.close()


def rank_device(cfg: "RunConfig", placed: "DeviceMap | None", task: TaskEnv, torch: Any) -> Any:
    """This rank's device: the GPU the run placed it on (devices.json, refit_core/planning/devices.py), or the CPU."""
    from refit_core.planning.devices import assign_devices
    from refit_core.planning.methods import method

    if not method(cfg.run.method).uses_gpus:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"--refit-method {cfg.run.method} needs CUDA GPUs; use --refit-method gloo on CPU")
    count = torch.cuda.device_count()
    if placed is None:  # a run directory written without a placement: the same rules, this node's GPUs
        placed = assign_devices(cfg.world(), cfg.run.method, task.local_world_size or cfg.hardware.gpus, count)
    index = placed.device(task.rank)
    if index is None or index >= count:
        raise RuntimeError(f"rank {task.rank} is placed on GPU {index} but this node shows {count} GPU(s) "
                           f"(CUDA_VISIBLE_DEVICES={task.visible_devices}): "
                           "submit again from where the job runs, or with --gpus-per-node set to the node's GPUs")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--prepare":
        plan = prepare(Path(args[1]))
        print(f"plan written: {len(plan.transfers)} transfers -> {Path(args[1]) / PLAN_FILE}")
        return 0
    if len(args) != 1:
        print("usage: python -m jobs.refit_job [--prepare] RUN_DIR", file=sys.stderr)
        return 2
    rec = run(args[0])
    return 0 if rec.verified else 1


def payload_transport(cfg: "RunConfig", plan: "Plan") -> Any:
    """What refits on this rank: the method's transport for refitctl's synthetic shards (`--payload
    synthetic`), or around it, for `--payload megatron`, the wrapper that builds the Megatron-Core models
    on the rank and refits their parameters through refit_core/library (refit_core/megatron/payload.py)."""
    from refit_core.config import PAYLOADS
    from refit_core.execution.engine import run_transport

    transport = run_transport(cfg, plan)
    if cfg.run.payload == PAYLOADS[0]:
        return transport
    from refit_core.megatron.payload import MegatronPayload

    return MegatronPayload(transport)


if __name__ == "__main__":
    sys.exit(main())

