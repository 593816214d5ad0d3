"""Run a plan on this rank: fill sources, then per iteration poison, refit, verify, record.

The process group exists already (jobs/ creates it); this module only uses it for barriers and
hands it to the transport. Verification runs after every iteration and is not timed.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.distributed as dist

from refit_core.config import PAYLOADS, RunConfig
from refit_core.planning.plan import Plan, plan_transfers
from refit_core.execution.reference import destination_check
from refit_core.execution.sender import for_precision
from refit_core.execution.wire import rank_storages
from refit_core.execution.transports.base import RankContext, Transport
from refit_core.execution.transports.registry import make_transport
from refit_core.execution.watchdog import Watchdog
from refit_core.execution import weights
from refit_core.execution.hooks import NO_HOOKS, RankHooks
from refit_core.results import IterationRecord, RankRecord


def run_rank(cfg: RunConfig, rank: int, world_size: int, device: torch.device,
             active_group: object, record: RankRecord, on_record: Callable[[RankRecord], None],
             plan: Plan | None = None, setup_group: object = None, watchdog: Watchdog | None = None,
             hooks: RankHooks = NO_HOOKS) -> RankRecord:
    """Execute warm-up + timed iterations on this (active) rank; fills in `record` (made by the caller,
    jobs/refit_job.py), hands it to `on_record` after every change (RankRecordWriter.save) and returns it.

    Every wait is a phase of `watchdog` (refit_core/execution/watchdog.py; one is made here if none is given).
    `hooks` act before the set-up and each transfer and after each transfer (refit_core/execution/hooks.py)."""
    plan = plan or plan_transfers(cfg.inventory(), cfg.world(), precision=cfg.inference_precision)
    world = plan.world
    inv = plan.inventory
    source, destination = rank_storages(plan, rank)  # in the destination's precision (wire.py)
    ctx = RankContext(
        config=cfg, plan=plan, rank=rank, world_size=world_size, device=device,
        rank_plan=plan.for_rank(rank),
        source=source, destination=destination,
        active_group=active_group,
    )
    traffic = plan.per_rank[rank]
    record.role, record.host, record.device, record.method = (world.role(rank), socket.gethostname(),
                                                              _device_name(device), cfg.method)
    record.source_bytes = ctx.source.nbytes if ctx.source else 0
    record.destination_bytes = ctx.destination.nbytes if ctx.destination else 0
    log = _Log(rank)
    own_watchdog = watchdog is None
    if watchdog is None:
        watchdog = Watchdog(cfg.timeout_s, rank, lambda e: on_record(replace(record, error=record.error or e)),
                            watch_parent=False)
    transport = run_transport(cfg, plan)
    try:
        watchdog.arm(getattr(transport, "setup_phase", f"{cfg.method} transport set-up"))
        hooks.before("setup")
        transport.prepare(ctx)
        record.extra_bytes = transport.extra_bytes
        record.transport = transport.info
        record.extra_bytes_measured = transport.measured_extra_bytes
        log(f"{record.role} on {record.device}: {cfg.method} transport ready, "
            f"{record.source_bytes + record.destination_bytes} shard bytes, {transport.extra_bytes} extra bytes")
        watchdog.arm("weight fill")
        check = destination_check(plan, rank, device)
        for buf, storage in transport.source_parts:
            weights.fill(buf, storage, inv)
        if transport.source_parts:
            log("source shards filled")
        total = cfg.warmup + cfg.iterations
        if setup_group is not None and dist.is_initialized():
            watchdog.arm("set-up barrier (every rank's weights filled)")
            dist.barrier(group=setup_group)  # sources have filled; setup time is not refit time
        for k in range(total):
            watchdog.arm(f"iteration {k - cfg.warmup}")
            for buf, _ in transport.destination_parts:
                weights.poison(buf)
            _sync(device)
            _barrier(active_group, device, cfg.method)
            hooks.before("iteration", k)
            stats = transport.iteration()
            hooks.after_transfer(k, transport.destination_parts)
            for buf, storage in transport.destination_parts:
                check(buf, storage)
            watchdog.disarm()
            log(f"iteration {k - cfg.warmup}{' (warm-up)' if k < cfg.warmup else ''}: {stats.time_ms:.3f} ms"
                + (", verified" if ctx.destination is not None else ""))
            rec = IterationRecord(k - cfg.warmup if k >= cfg.warmup else -(cfg.warmup - k), k < cfg.warmup,
                                  stats.time_ms, traffic.bytes_in, traffic.bytes_out, traffic.bytes_local,
                                  stats.phases_ms, stats.launches)
            record.iterations.append(rec)
            on_record(record)
        record.verified = True
        record.complete = True
    except BaseException as e:
        record.error = f"{e.__class__.__name__}: {e}"
        on_record(record)
        raise
    finally:
        watchdog.arm(f"{cfg.method} transport close")
        try:
            transport.close()
        finally:
            if own_watchdog:
                watchdog.stop()
            else:
                watchdog.disarm()
    on_record(record)
    return record


def run_transport(cfg: RunConfig, plan: Plan) -> Transport:
    """The run's transport: the method's, FP8's quantising sender around it where the destination is
    FP8, and for --payload megatron the wrapper that builds Megatron-Core models and refits their
    parameters through refit_core/library (refit_core/megatron/payload.py)."""
    transport = for_precision(make_transport(cfg.method), plan.precision)  # FP8: the sender quantises first
    if cfg.payload != PAYLOADS[0]:  # anything but refitctl's synthetic shards: real models
        from refit_core.megatron.payload import MegatronPayload

        return MegatronPayload(transport)
    return transport


class _Log:
    """Per-rank progress lines on stdout (they land in the rank's log), with seconds since start."""

    def __init__(self, rank: int) -> None:
        self.rank, self.t0 = rank, time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[rank {self.rank} +{time.monotonic() - self.t0:7.2f}s] {msg}", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _barrier(group: object, device: torch.device, method: str) -> None:
    if not dist.is_initialized():
        return
    if device.type == "cuda" and dist.get_backend(group) == "nccl":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
