"""The naive baseline most RL frameworks use, over NVSHMEM: gather whole tensors, send whole, slice.

Per parameter, one after another: the source ranks of one replica copy their shards into the
first holder's full-size buffer (a TP all-gather), that rank copies the whole tensor to every
destination rank that needs any part of it, and each destination copies its shard out. Every
step is a separate copy, with a barrier between steps. It exists to measure what the planned,
batched transport gains (`--refit-method naive`); it is not meant for real use.
"""

from __future__ import annotations

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
        import nvshmem.core as nv

        self.ctx, self.nv = ctx, nv
        w, inv, spec = ctx.plan.world, ctx.plan.inventory, ctx.plan.inventory.spec
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
        gather_at, recv_at = stor, stor + biggest

        def full(buf: torch.Tensor, at: int, p) -> torch.Tensor:
            return buf[at: at + p.nbytes].view(torch_dtype(p.dtype)).view(p.shape)

        def local(buf_off: int, slot, p) -> torch.Tensor:
            return self._sym[buf_off + slot.offset: buf_off + slot.offset + slot.nbytes].view(
                torch_dtype(p.dtype)).view(slot.shape)

        self.steps: list[tuple[list, list, list]] = []
        src0, dst0 = w.source.first_rank, w.destination.first_rank
        for pi, p in enumerate(inv.params):
            d = p.split_dim
            sgroups = shard_groups(p, w.source.layout, spec.num_layers, spec.num_experts)
            root = min(min(g.holders) for g in sgroups) + src0
            gather, send, cut = [], [], []
            for g in sgroups:
                if min(g.holders) + src0 == me:
                    slot = ctx.source.by_param[pi]
                    mine = local(0, slot, p)
                    for pc in g.pieces:
                        gather.append((_along(full(peers[root], gather_at, p), d, pc.start, pc.length),
                                       _along(mine, d, pc.local_start, pc.length)))
            needing = sorted({h + dst0 for g in shard_groups(p, w.destination.layout, spec.num_layers, spec.num_experts)
                              for h in g.holders})
            if me == root:
                for r in needing:
                    send.append((full(peers[r], recv_at, p), full(self._sym, gather_at, p)))
            if me in needing:
                slot = ctx.destination.by_param[pi]
                mine = local(self.dst_offset[me], slot, p)
                for pc in slot.pieces:
                    cut.append((_along(mine, d, pc.local_start, pc.length),
                                _along(full(self._sym, recv_at, p), d, pc.start, pc.length)))
            self.steps.append((gather, send, cut))
        self.extra_bytes = 2 * biggest
        self.stream = torch.cuda.current_stream(ctx.device)

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
