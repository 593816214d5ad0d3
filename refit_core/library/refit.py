"""A refit built once, then called every step on the caller's own tensors.

    refit = Refit.build(config, source={name: tensor, ...}, destination={name: tensor, ...})
    for step in training:
        ...                       # the optimizer updates the source tensors in place
        refit()                   # the destination tensors now hold the source's weights

`build` is collective (every rank of the default process group calls it, a rank without a role
with `None`): it validates the config, plans once (refit_core/planning), binds the caller's
tensors as the shard buffers (refit_core/library/tensors.py: in place, or adopted once; adopted
destination tensors hold undefined values until the first call), and
prepares the method's transport over them (its staging buffers, bounded by the bucket size, and
its block lists). Each call then only moves bytes: one `transport.iteration()`, plus the
transfer-digest check of refit_core/library/verify.py unless `verify=False`. With verification on,
`build` also checks the plan's coverage once (rank 0; refit_core/planning/validate.py).

Methods whose transport takes the caller's buffers (`accepts_caller_buffers`: gloo and nccl) run
here. NVSHMEM needs the bytes its peers read in its symmetric heap: the caller's tensors stay where
they are and each round is staged through a heap buffer bounded by the bucket size (the method's
`caller_transport`, refit_core/execution/transports/shared.py; docs/library.md says what it costs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.distributed as dist

from refit_core.config import RunConfig
from refit_core.errors import ConfigError, TransportError
from refit_core.planning import methods
from refit_core.planning.storage import Storage
from refit_core.execution.transports.base import IterationStats, RankContext, Transport
from refit_core.execution.transports.registry import make_transport
from refit_core.planning.wire import rank_storages
from refit_core.library.tensors import BoundShards, bind_shards
from refit_core.library.verify import TransferDigests
from refit_core.planning.plan import Plan
from refit_core.planning.validate import CoverageError, check_plan

log = logging.getLogger(__name__)
Tensors = Mapping[str, torch.Tensor]
Layouts = Callable[[str, int], "Storage | None"]


@dataclass(frozen=True)
class RefitStats:
    """One call: the refit's time (the transport's iteration), and the check's if it ran."""

    time_ms: float
    verify_ms: float | None  # None: verification off
    transfers_checked: int
    phases_ms: dict[str, float]
    launches: int = 0  # copy launches and batched sends the transport issued


class Refit:
    """A planned refit bound to this rank's tensors; call it to move the source's bytes."""

    def __init__(self, config: RunConfig, plan: Plan, rank: int, transport: Transport,
                 source: BoundShards | None, destination: BoundShards | None, verify: bool,
                 build_phases_ms: dict[str, float]) -> None:
        self.config, self.plan, self.rank, self.transport = config, plan, rank, transport
        self.source, self.destination = source, destination
        self.verify = verify
        self.build_phases_ms = build_phases_ms  # plan, bind, layouts, prepare: what the first call costs first
        self.build_ms = sum(build_phases_ms.values())
        self.calls = 0
        self._digests = TransferDigests(plan, rank, source.storage if source else None,
                                        destination.storage if destination else None)

    @classmethod
    def build(cls, config: RunConfig, source: Tensors | None, destination: Tensors | None, *,
              verify: bool = True, plan: Plan | None = None, transport: Transport | None = None,
              group: object = None, layouts: Layouts | None = None) -> "Refit":
        """Plan `config`'s refit and bind this rank's tensors (refitctl names -> local shards) to it.

        Collective over the default process group. `plan` and `transport` default to the config's own
        (the engine passes what it has built); `layouts` (every rank's storage by role) to one gather
        of them here, which also carries the coverage check's verdict (skipped when `layouts` is
        given and `verify` is off: refit_core/megatron gathers them with the models' descriptions)."""
        clock = _Laps()
        rank, device = _check_world(config, source, destination)
        transport = transport or make_transport(config.run.method, caller_buffers=True)
        if not getattr(transport, "accepts_caller_buffers", False):  # before any tensor is touched
            raise ConfigError(f"--refit-method {config.run.method} cannot refit the caller's tensors (its transport "
                              "needs buffers of its own kind): use gloo on CPU or nccl on GPUs")
        if methods.method(config.run.method).needs_cuda and device.type != "cuda":
            raise ConfigError(f"--refit-method {config.run.method} refits tensors on CUDA GPUs, these are on "
                              f"{device.type}: move the models to the GPU, or use gloo on CPU")
        plan = plan or config.plan()
        clock.lap("plan")
        src_layout, dst_layout = rank_storages(plan, rank)
        src = _bind(source, src_layout, plan, "source")
        dst = _bind(destination, dst_layout, plan, "destination")  # values not kept: the refit writes them all
        clock.lap("bind")
        if layouts is None or verify:
            layouts = _every_rank_layouts(src, dst, group, _coverage(plan, rank) if verify else None, layouts)
        _agree(layouts, rank, src, dst)
        clock.lap("layouts")
        ctx = RankContext(config=config, plan=plan, rank=rank, world_size=dist.get_world_size(), device=device,
                          rank_plan=plan.for_rank(rank), source=src.storage if src else None,
                          destination=dst.storage if dst else None, active_group=group,
                          source_buffer=src.buffer if src else None,
                          destination_buffer=dst.buffer if dst else None, layouts=layouts)
        transport.prepare(ctx)
        clock.lap("prepare")
        log.info("rank %d: refit built in %.1f ms (%s, source %s, destination %s)", rank, sum(clock.ms.values()),
                 config.run.method, _how(src), _how(dst))
        return cls(config, plan, rank, transport, src, dst, verify, clock.ms)

    def __call__(self) -> RefitStats:
        """Move every source byte this rank sends or receives; check them unless verification is off."""
        stats: IterationStats = self.transport.iteration()
        self.calls += 1
        if not self.verify:
            return RefitStats(stats.time_ms, None, 0, stats.phases_ms, stats.launches)
        t0 = time.perf_counter()
        n = self._digests.check(self.source.buffer if self.source else None,
                                self.destination.buffer if self.destination else None)
        return RefitStats(stats.time_ms, (time.perf_counter() - t0) * 1e3, n, stats.phases_ms, stats.launches)

    @property
    def extra_bytes(self) -> int:
        """Memory the transport holds beyond the caller's tensors (staging buffers, descriptors)."""
        return self.transport.extra_bytes

    def close(self) -> None:
        """Free the transport's buffers; the caller's tensors stay as they are."""
        self.transport.close()


def _check_world(config: RunConfig, source: Tensors | None, destination: Tensors | None) -> tuple[int, torch.device]:
    """This rank and its tensors' device, after the one-line checks a caller can act on."""
    if not dist.is_initialized():
        raise ConfigError("refit_core.library needs torch.distributed initialised (one process per rank): "
                          "call torch.distributed.init_process_group first")
    config.validate(gpu_memory=False)
    need = config.world().gpus_used
    if not need <= dist.get_world_size() <= config.hardware.gpus:
        raise ConfigError(f"the process group has {dist.get_world_size()} ranks but the layouts use {need} of a "
                          f"world of {config.hardware.gpus}: build the config with gpus = the world size")
    if config.run.inference_precision != "bf16":
        raise ConfigError("refit_core.library refits BF16 destinations only: drop --rl-inference-precision fp8")
    tensors = [t for ts in (source, destination) if ts for t in ts.values()]
    return dist.get_rank(), tensors[0].device if tensors else torch.device("cpu")


def _bind(tensors: Tensors | None, layout: Storage | None, plan: Plan, role: str) -> BoundShards | None:
    if layout is None:
        if tensors:
            raise ConfigError(f"rank {dist.get_rank()} holds no {role} shards in this layout but was given "
                              f"{len(tensors)} {role} tensors: pass None on ranks without the role")
        return None
    if tensors is None:
        raise ConfigError(f"rank {dist.get_rank()} holds {role} shards in this layout but was given no {role} tensors")
    return bind_shards(tensors, layout, plan.inventory, role, keep_values=role == "source")


def _coverage(plan: Plan, rank: int) -> str | None:
    """The plan's coverage check (refit_core/planning/validate.py: every destination element exactly
    once, from a holder), run by rank 0 alone (the plan is the same on every rank): its error or None."""
    if rank != 0:
        return None
    try:
        check_plan(plan)
    except CoverageError as e:
        return str(e)
    return None


def _every_rank_layouts(src: BoundShards | None, dst: BoundShards | None, group: object, coverage: str | None,
                        known: Layouts | None) -> Layouts:
    """Every rank's (source, destination) storages: where each rank's shards sit in its buffer, which a
    two-sided transport needs for its peers too (one all_gather_object, at build time, which also
    carries rank 0's coverage verdict: every rank raises it). With `known` layouts only the verdict travels."""
    mine = (None, None) if known else (src.storage if src else None, dst.storage if dst else None)
    every: list[tuple[Storage | None, Storage | None, str | None]] = [None] * dist.get_world_size(group)  # type: ignore[list-item]
    dist.all_gather_object(every, (*mine, coverage), group=group)
    failed = next((e[2] for e in every if e[2]), None)
    if failed:
        raise CoverageError(failed)
    if known is not None:
        return known

    def layouts(role: str, rank: int) -> Storage | None:
        return every[rank][0 if role == "source" else 1]

    return layouts


class _Laps:
    """Milliseconds between successive laps, by name."""

    def __init__(self) -> None:
        self.t, self.ms = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] = round((now - self.t) * 1e3, 3)
        self.t = now


def _agree(layouts: Layouts, rank: int, src: BoundShards | None, dst: BoundShards | None) -> None:
    """This rank's bound storages are what its peers were told (else their messages would not match)."""
    for role, bound in (("source", src), ("destination", dst)):
        told = layouts(role, rank)
        if (told.slots if told else None) != (bound.storage.slots if bound else None):
            raise TransportError(f"rank {rank}: its {role} shards are not laid out as its peers were told: "
                                 "the tensors changed between the description and the bind")


def _how(b: BoundShards | None) -> str:
    if b is None:
        return "none"
    return "in place" if b.in_place else f"adopted ({b.cast} cast)"
