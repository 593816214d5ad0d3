"""Run a plan on this rank: fill sources, then per iteration poison, refit, verify, record.

The process group exists already (jobs/ creates it); this module only uses it for barriers and
hands it to the transport. Verification runs after every iteration and is not timed.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from refit_core.config import RunConfig
from refit_core.planning.devices import DeviceMap
from refit_core.planning.plan import Plan
from refit_core.execution.reference import destination_check
from refit_core.execution.sender import for_precision
from refit_core.planning.wire import rank_storages
from refit_core.execution.transports.base import RankContext, Transport
from refit_core.execution.transports.registry import make_transport
from refit_core.execution.watchdog import Watchdog
from refit_core.execution import weights
from refit_core.execution.hooks import NO_HOOKS, RankHooks
from refit_core.records import IterationRecord, RankRecord

log = logging.getLogger(__name__)


@dataclass
class _RankRun:
    """What one rank's refit holds while it runs: the config and plan, its context and transport, its record."""

    cfg: RunConfig
    ctx: RankContext
    transport: Transport
    record: RankRecord
    on_record: Callable[[RankRecord], None]
    watchdog: Watchdog
    hooks: RankHooks
    check: Any = None  # verifies a destination part (reference.destination_check), made after the set-up


def run_rank(cfg: RunConfig, plan: Plan, rank: int, world_size: int, device: torch.device,
             active_group: object, record: RankRecord, on_record: Callable[[RankRecord], None],
             setup_group: object, watchdog: Watchdog, hooks: RankHooks = NO_HOOKS,
             devices: DeviceMap | None = None, transport: Transport | None = None) -> RankRecord:
    """Execute warm-up + timed iterations of `plan` on this (active) rank; fills in `record` (made by the caller,
    jobs/refit_job.py), hands it to `on_record` after every change (RankRecordWriter.save) and returns it.

    Every wait is a phase of `watchdog` (refit_core/execution/watchdog.py). `hooks` act before the set-up and
    each transfer and after each transfer (refit_core/execution/hooks.py). `transport`: the caller's (the job
    wraps it for --payload megatron, jobs/refit_job.py), else the method's (`run_transport`)."""
    source, destination = rank_storages(plan, rank)  # in the destination's precision (wire.py)
    ctx = RankContext(config=cfg, plan=plan, rank=rank, world_size=world_size, device=device,
                      rank_plan=plan.for_rank(rank), source=source, destination=destination,
                      active_group=active_group, devices=devices)
    record.role, record.host, record.device, record.method = (plan.world.role(rank), socket.gethostname(),
                                                              _device_name(device), cfg.run.method)
    record.source_bytes = source.nbytes if source else 0
    record.destination_bytes = destination.nbytes if destination else 0
    transport = transport or run_transport(cfg, plan)
    r = _RankRun(cfg, ctx, transport, record, on_record, watchdog, hooks)
    try:
        _set_up(r, setup_group)
        for k in range(cfg.run.warmup + cfg.run.iterations):
            _iteration(r, k)
        record.verified = record.complete = True
    except BaseException as e:
        record.error = f"{e.__class__.__name__}: {e}"
        on_record(record)
        raise
    finally:
        watchdog.arm(f"{cfg.run.method} transport close")
        try:
            transport.close()
        finally:
            watchdog.disarm()
    on_record(record)
    return record


def run_transport(cfg: RunConfig, plan: Plan) -> Transport:
    """The method's transport, with FP8's quantising sender around it where the destination is FP8."""
    return for_precision(make_transport(cfg.run.method), plan.precision)  # FP8: the sender quantises first


def _set_up(r: _RankRun, setup_group: object) -> None:
    """The transport's buffers, then the sources' deterministic values; every rank's before the first iteration."""
    cfg, record, transport = r.cfg, r.record, r.transport
    r.watchdog.arm(getattr(transport, "setup_phase", f"{cfg.run.method} transport set-up"))
    r.hooks.before("setup")
    transport.prepare(r.ctx)
    record.extra_bytes = transport.extra_bytes
    record.transport = transport.info
    record.extra_bytes_measured = transport.measured_extra_bytes
    log.info(f"{record.role} on {record.device}: {cfg.run.method} transport ready, "
             f"{record.source_bytes + record.destination_bytes} shard bytes, {transport.extra_bytes} extra bytes")
    r.watchdog.arm("weight fill")
    r.check = destination_check(r.ctx.plan, r.ctx.rank, r.ctx.device)
    for buf, storage in transport.source_parts:
        weights.fill(buf, storage, r.ctx.plan.inventory)
    if transport.source_parts:
        log.info("source shards filled")
    if setup_group is not None and dist.is_initialized():
        r.watchdog.arm("set-up barrier (every rank's weights filled)")
        dist.barrier(group=setup_group)  # sources have filled; setup time is not refit time


def _iteration(r: _RankRun, k: int) -> None:
    """Iteration k (warm-up first): poison the destinations, line up, refit, verify every byte, record."""
    cfg, ctx, transport = r.cfg, r.ctx, r.transport
    r.watchdog.arm(f"iteration {k - cfg.run.warmup}")
    for buf, _ in transport.destination_parts:
        weights.poison(buf)
    _sync(ctx.device)
    _barrier(ctx.active_group, ctx.device)
    r.hooks.before("iteration", k)
    stats = transport.iteration()
    r.hooks.after_transfer(k, transport.destination_parts)
    for buf, storage in transport.destination_parts:
        r.check(buf, storage)
    r.watchdog.disarm()
    log.info(f"iteration {k - cfg.run.warmup}{' (warm-up)' if k < cfg.run.warmup else ''}: {stats.time_ms:.3f} ms"
             + (", verified" if ctx.destination is not None else ""))
    traffic = ctx.plan.per_rank[ctx.rank]
    r.record.iterations.append(IterationRecord(
        k - cfg.run.warmup if k >= cfg.run.warmup else -(cfg.run.warmup - k), k < cfg.run.warmup, stats.time_ms,
        traffic.bytes_in, traffic.bytes_out, traffic.bytes_local, stats.phases_ms, stats.launches))
    r.on_record(r.record)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _barrier(group: object, device: torch.device) -> None:
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
