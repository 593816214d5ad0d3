"""The naive baseline most RL frameworks use, over NVSHMEM: gather whole tensors, send whole, slice.

Per parameter, one after another: the source ranks of one replica copy their shards into the
first holder's full-size buffer (a TP all-gather), that rank copies the whole tensor to every
destination rank that needs any part of it, and each destination copies its shard out. Every
step is a separate copy, with a barrier between steps. It exists to measure what the planned,
batched transport gains (`--refit-method naive`); it is not meant for real use.
"""

from __future__ import annotations

from typing import Any

import torch

from refit_core import environment
from refit_core.planning.sharding import shard_groups
from refit_core.planning.memory import NVSHMEM_RESERVE_BYTES
from refit_core.planning.storage import aligned
from refit_core.planning.wire import rank_storages
from refit_core.execution.transports.base import IterationStats, RankContext, whole, TransportReport
from refit_core.execution.transports.nvshmem import init_nvshmem
from refit_core.execution.weights import torch_dtype


def _along(t: torch.Tensor, dim: int, start: int, length: int) -> torch.Tensor:
    return t.narrow(dim, start, length)


class NaiveTransport(TransportReport):
    name = "naive"
    setup_phase = "NVSHMEM init"  # the watchdog's name for prepare(): nvshmem init has no timeout of its own

    def __init__(self) -> None:
        super().__init__()
        self._sym: torch.Tensor | None = None

    def prepare(self, ctx: RankContext) -> None:
        """One symmetric heap per PE: every PE's shards, then room for one whole tensor gathered and one received."""
        import nvshmem.core as nv

        self.ctx, self.nv = ctx, nv
        w, inv = ctx.plan.world, ctx.plan.inventory
        active = list(range(w.gpus_used))
        own = {}
        self.dst_offset = {}
        for r in active:
            s, d = rank_storages(ctx.plan, r)
            self.dst_offset[r] = aligned(s.nbytes if s else 0)
            own[r] = self.dst_offset[r] + (d.nbytes if d else 0)
        biggest = aligned(max(p.nbytes for p in inv.params))
        stor = aligned(max(own.values()))
        size = stor + 2 * biggest
        environment.export({"NVSHMEM_SYMMETRIC_SIZE": str(size + NVSHMEM_RESERVE_BYTES)}, overwrite=False)
        init_nvshmem(ctx.rank, len(active), ctx.device, ctx.active_group)
        self._sym = nv.bytetensor((size,))
        me = ctx.rank
        self.source_parts = whole(self._sym[: ctx.source.nbytes] if ctx.source else None, ctx.source)
        self.destination_parts = whole(
            self._sym[self.dst_offset[me]: self.dst_offset[me] + ctx.destination.nbytes] if ctx.destination else None,
            ctx.destination)
        peers = {r: nv.get_peer_tensor(self._sym, r) for r in active}
        self.steps = [self._steps_of(pi, peers, stor, stor + biggest) for pi in range(len(inv.params))]
        self.extra_bytes = 2 * biggest
        self.stream = torch.cuda.current_stream(ctx.device)

    def _full(self, buf: torch.Tensor, at: int, p: Any) -> torch.Tensor:
        return buf[at: at + p.nbytes].view(torch_dtype(p.dtype)).view(p.shape)

    def _local(self, buf_off: int, slot: Any, p: Any) -> torch.Tensor:
        assert self._sym is not None
        return self._sym[buf_off + slot.offset: buf_off + slot.offset + slot.nbytes].view(
            torch_dtype(p.dtype)).view(slot.shape)

    def _steps_of(self, pi: int, peers: dict[int, torch.Tensor], gather_at: int,
                  recv_at: int) -> tuple[list[Any], list[Any], list[Any]]:
        """Parameter `pi`'s copies on this PE: gather its pieces whole on the root, send the whole tensor to
        every destination that needs some of it, cut each destination's slices out."""
        ctx, w = self.ctx, self.ctx.plan.world
        spec, p, me = ctx.plan.inventory.spec, ctx.plan.inventory.params[pi], ctx.rank
        src0, dst0, d = w.source.first_rank, w.destination.first_rank, p.split_dim
        sgroups = shard_groups(p, w.source.layout, spec.num_layers, spec.num_experts)
        root = min(min(g.holders) for g in sgroups) + src0
        gather: list[Any] = []
        send: list[Any] = []
        cut: list[Any] = []
        for g in sgroups:
            if min(g.holders) + src0 == me:
                mine = self._local(0, ctx.source.by_param[pi], p)
                for pc in g.pieces:
                    gather.append((_along(self._full(peers[root], gather_at, p), d, pc.start, pc.length),
                                   _along(mine, d, pc.local_start, pc.length)))
        needing = sorted({h + dst0 for g in shard_groups(p, w.destination.layout, spec.num_layers, spec.num_experts)
                          for h in g.holders})
        if me == root:
            for r in needing:
                send.append((self._full(peers[r], recv_at, p), self._full(self._sym, gather_at, p)))
        if me in needing:
            slot = ctx.destination.by_param[pi]
            mine = self._local(self.dst_offset[me], slot, p)
            for pc in slot.pieces:
                cut.append((_along(mine, d, pc.local_start, pc.length),
                            _along(self._full(self._sym, recv_at, p), d, pc.start, pc.length)))
        return gather, send, cut

    def iteration(self) -> IterationStats:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        bar = self.nv.barrier_all
        bar(stream=self.stream)
        launches = 1
        for gather, send, cut in self.steps:
            for dst, src in gather:
                dst.copy_(src)
            bar(stream=self.stream)
            for dst, src in send:
                dst.copy_(src)
            bar(stream=self.stream)
            for dst, src in cut:
                dst.copy_(src)
            bar(stream=self.stream)
            launches += len(gather) + len(send) + len(cut) + 3
        end.record(self.stream)
        end.synchronize()
        ms = start.elapsed_time(end)
        return IterationStats(ms, {"transfer": ms}, launches)

    def close(self) -> None:
        if self._sym is not None:
            torch.cuda.synchronize()
            self.source_parts, self.destination_parts = [], []
            self.nv.free_tensor(self._sym)
            self._sym = None
            self.nv.finalize()
