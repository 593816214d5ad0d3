"""Two-sided refit through torch.distributed point-to-point (NCCL on GPUs, gloo on CPU).

Zero-copy first (blocks.py says which bytes): every contiguous run of at least
`--staged-direct-min-bytes` (RunSettings.staged_direct_min_bytes) travels straight from the source shard buffer into the destination shard
buffer, one isend/irecv on views of the two flat buffers, all of them in ONE batch issued at the
start of the iteration, so the link starts at once and no byte of them is packed or unpacked.
The rest (short runs, strided blocks of row-parallel weights) is staged: per round, pack every
peer's chunk into a staging buffer (one kernel on GPU), exchange all chunks with one batched
isend/irecv, unpack (one kernel). Two staging sets alternate so that round k+1 is packed while
round k is in flight; the chunk size keeps both sets within the bucket size. Local copies run
after the first batches are issued, so on a GPU they overlap the link.

`--staged-zero-copy off` stages every byte (the path before zero-copy, for before/after
measurements); `--staged-direct-min-bytes` sets the threshold (default 4 MiB).

A relayed plan (planning/relay.py) has a second hop: once a rank's hop 0 has completed (its receives
waited for and unpacked), relays forward from their destination shard to the other GPUs of their node,
the same way (zero-copy runs, then staged rounds through the first staging set, sized for both hops),
timed as the phase "relay". A relay holds nothing beyond its own shard and the staging.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from refit_core.errors import TransportError
from refit_core.planning import methods
from refit_core.planning.blocks import Block, Chunk, RankBlocks, ShardLayouts, chunk_bytes_for, local_blocks, rank_blocks
from refit_core.planning.storage import Storage
from refit_core.planning.storage import aligned
from refit_core.execution.transports.base import IterationStats, RankContext, TransportReport, allocate, shard_buffer, whole
from refit_core.execution.transports.copy import CudaBlockCopy, absolute, copy_blocks_torch, cuda_copy_available
from refit_core.execution.transports.cma import CrossMemoryReads
from refit_core.execution.transports.shared import SharedRounds, ShmStages, StageMemory, lay_out

CROSS_MEMORY_MIN_BYTES = 4 << 20
"""Below this many bytes into the busiest receiver, `auto` stages instead of reading. Chosen while both paths
used gloo's barrier: with `benchmarks/megatron_peer.py` (reduced model, the 2-core CI machine, two runs minutes
apart) collocated-2, 1.8 MB into its busiest rank, took 25.6 ms read directly and 20.7 ms staged, and reading
made every row's first call faster. Not re-tuned since the host barrier: in refitctl's own runs
(`benchmarks/gloo_shared_memory.py`, docs/benchmarks.md) collocated-2 then took 31.1 ms read, 33.0 ms staged,
and config-4 (41 MB) 9.7 ms read, 7.7 ms staged."""


class _Step:
    """One copy step (local, a round's pack or unpack) bound to its buffers."""

    def __init__(self, blocks: list[Block], src: torch.Tensor, dst: torch.Tensor, cuda: bool) -> None:
        self.blocks, self.src, self.dst = blocks, src, dst
        self.kernel = CudaBlockCopy(absolute(blocks, src.data_ptr(), dst.data_ptr()), src.device) if cuda else None

    @property
    def desc_bytes(self) -> int:
        """Device bytes of the copy kernel's descriptor table."""
        return self.kernel.desc.numel() * 8 if self.kernel is not None and self.kernel.desc is not None else 0

    def __call__(self) -> int:
        if self.kernel is not None:
            self.kernel()
            return 1 if self.kernel.count else 0
        copy_blocks_torch(self.blocks, self.src, self.dst)
        return len(self.blocks)


class StagedTransport(TransportReport):
    """nccl / gloo: long runs zero-copy, the rest packed into buckets; batched isend/irecv."""

    accepts_caller_buffers = True  # refit_core/library hands it a model's own bytes (RankContext.source_buffer)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        # a one-sided method (nvshmem) runs here only on the caller's tensors, staged through its heap
        self.two_sided = methods.method(name).two_sided
        self.setup_phase = f"{name} transport set-up (staging buffers, copy kernels)"
        self.src_buf: torch.Tensor | None = None
        self.dst_buf: torch.Tensor | None = None
        self.wire_source = None  # FP8 (sender.py): produces the source's wire bytes; no source buffer then
        self.relay: _Hop | None = None
        self.shared: SharedRounds | CrossMemoryReads | None = None  # through memory the ranks share (one host)

    def prepare(self, ctx: RankContext) -> None:
        self.ctx = ctx
        dev = ctx.device
        self.cuda = dev.type == "cuda" and cuda_copy_available()
        before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
        self.src_buf = shard_buffer(ctx, "source") if self.wire_source is None else None
        self.dst_buf = shard_buffer(ctx, "destination")
        self.source_parts = whole(self.src_buf, ctx.source)
        self.destination_parts = whole(self.dst_buf, ctx.destination)
        chunk = chunk_bytes_for(ctx.plan, ctx.config.run.bucket_bytes)
        # FP8 plans stage every byte on both ends: the sender quantises each bucket as it packs it
        # (a zero-copy run would need the whole FP8 send image); both ends see the plan's precision.
        # Through shared memory every byte is staged too (shared.py): there is no socket to send a run on.
        cfg = ctx.config
        threshold = cfg.run.staged_direct_min_bytes if cfg.run.staged_zero_copy and ctx.plan.destination is None else None
        layouts = ctx.layouts or ShardLayouts(ctx.plan)
        if self._prepare_shared(ctx, chunk, layouts):
            return
        rb: RankBlocks = rank_blocks(ctx.plan, ctx.rank_plan, ctx.source, ctx.destination, chunk, threshold, layouts)
        hop1 = _forwarding(ctx, chunk, threshold, layouts)
        # zero-copy messages: views of the shard buffers, sends then receives, each peer's in stream order
        self.direct = [(dist.isend, self.src_buf[d.src: d.src + d.nbytes], d.peer) for d in rb.direct_sends] + \
                      [(dist.irecv, self.dst_buf[d.dst: d.dst + d.nbytes], d.peer) for d in rb.direct_recvs]
        send_size = max((self._laid_out_size(r) for r in (*rb.sends, *hop1.sends)), default=0)
        recv_size = max((self._laid_out_size(r) for r in (*rb.recvs, *hop1.recvs)), default=0)
        sets = 2 if rb.rounds > 1 else 1
        self.stage_send = [allocate(send_size, dev) for _ in range(sets)] if send_size else []
        self.stage_recv = [allocate(recv_size, dev) for _ in range(sets)] if recv_size else []
        self.extra_bytes = sets * (send_size + recv_size)
        self.local = self._reader(list(rb.local), self.dst_buf) if rb.local else None
        self.rounds = []
        for k in range(rb.rounds):
            s_stage = self.stage_send[k % sets] if self.stage_send else None
            r_stage = self.stage_recv[k % sets] if self.stage_recv else None
            pack, sends = self._lay_out(rb.sends[k], packed_is_dst=True)
            unpack, recvs = self._lay_out(rb.recvs[k], packed_is_dst=False)
            self.rounds.append((
                self._reader(pack, s_stage) if pack else None,
                [(peer, s_stage[o: o + n]) for peer, o, n in sends],
                [(peer, r_stage[o: o + n]) for peer, o, n in recvs],
                _Step(unpack, r_stage, self.dst_buf, self.cuda) if unpack else None,
            ))
        self.relay = _Hop(self, hop1) if hop1.rounds or hop1.direct_sends or hop1.direct_recvs else None
        self.info = {"rounds": rb.rounds, "chunk_bytes": chunk, "staging_sets": sets, "shared_memory": False,
                     "relay_rounds": hop1.rounds, "relay_direct_ops": len(hop1.direct_sends) + len(hop1.direct_recvs),
                     "zero_copy": threshold is not None, "direct_min_bytes": threshold,
                     "direct_ops": len(self.direct), "direct_bytes": rb.direct_bytes, "staged_bytes": rb.staged_bytes}
        self.extra_bytes += sum(s.desc_bytes for s in (self.local, *(x for r in self.rounds for x in (r[0], r[3])))
                                if s is not None)
        if before is not None:
            shards = sum(b.numel() for b, given in ((self.src_buf, ctx.source_buffer), (self.dst_buf, ctx.destination_buffer))
                         if b is not None and given is None)  # the shard buffers this transport allocated
            self.measured_extra_bytes = torch.cuda.memory_allocated(dev) - before - shards

    def _stage_memory(self, ctx: RankContext) -> StageMemory | None:
        """Memory the ranks stage through instead of messages (shared.py), or None: NVSHMEM's symmetric heap
        for a one-sided method (refit_core/library hands it the caller's tensors); /dev/shm for gloo on the CPU
        (`_shares_host`), if the ranks turn out to share a host."""
        if not self.two_sided:
            from refit_core.execution.transports.nvshmem import HeapStages

            return HeapStages(ctx)
        return ShmStages(ctx.active_group, ctx.config.run.timeout_s) if self._shares_host(ctx) else None

    @staticmethod
    def _shares_host(ctx: RankContext) -> bool:
        """gloo on the CPU with --gloo-shared-memory auto or staged, BF16 destinations (FP8's sender quantises
        into socket staging) and no relays: the bytes may go through memory the ranks share, if on one host."""
        if ctx.device.type != "cpu" or dist.get_backend(ctx.active_group) != "gloo":
            return False
        return ctx.config.run.gloo_shared_memory != "off" and ctx.plan.destination is None \
            and not ctx.plan.relayed_bytes

    def _prepare_shared(self, ctx: RankContext, chunk: int, layouts: ShardLayouts) -> bool:
        """Every byte through memory the ranks share, if they can: read straight from the senders' shards
        (cma.py: one copy, two barriers a call, nothing to allocate) where some rank receives at least
        CROSS_MEMORY_MIN_BYTES, else staged (`_stage_memory`: two copies, one barrier); True if so."""
        mode = ctx.config.run.gloo_shared_memory
        if self._shares_host(ctx) and (mode == "read" or mode == "auto" and max(
                t.bytes_in for t in ctx.plan.per_rank.values()) >= CROSS_MEMORY_MIN_BYTES):
            self.shared = CrossMemoryReads.bind(ctx.plan, ctx.rank_plan, self.src_buf, self.dst_buf,
                                                ctx.destination, layouts, ctx.active_group, ctx.config.run.timeout_s)
            if self.shared is not None:
                local = local_blocks(ctx.plan, ctx.rank_plan, ctx.source, ctx.destination)
                self.local = self._reader(local, self.dst_buf) if local else None
                self.extra_bytes = self.shared.extra_bytes
                self.info = {"rounds": 0, "shared_memory": True, "cross_memory": True, "zero_copy": False,
                             "direct_ops": 0, "direct_bytes": 0, "staged_bytes": 0}
                return True
        memory = self._stage_memory(ctx)
        if memory is None:
            return False
        rb = rank_blocks(ctx.plan, ctx.rank_plan, ctx.source, ctx.destination, chunk, None, layouts)
        self.shared = SharedRounds.bind(rb, ctx.rank, self.src_buf, self.dst_buf, ctx.active_group,
                                        lambda blocks, src, dst: _Step(blocks, src, dst, self.cuda), memory)
        if self.shared is None:
            if not self.two_sided:
                raise TransportError(f"--refit-method {self.name} on the caller's tensors stages through its "
                                     "symmetric heap, which needs every rank on one node: use nccl across nodes")
            return False
        self.local = self._reader(list(rb.local), self.dst_buf) if rb.local else None
        self.extra_bytes = self.shared.extra_bytes
        self.info = {"rounds": len(self.shared.rounds), "chunk_bytes": chunk, "staging_sets": 2,
                     "shared_memory": True, "cross_memory": False, "zero_copy": False, "direct_ops": 0,
                     "direct_bytes": 0, "staged_bytes": rb.staged_bytes}
        return True

    def _reader(self, blocks: list[Block], dst: torch.Tensor) -> "_Step":
        """A step reading the source: a plain copy, or (FP8) the wire source producing the bytes."""
        if self.wire_source is not None:
            return self.wire_source.step(blocks, dst)
        return _Step(blocks, self.src_buf, dst, self.cuda)

    @staticmethod
    def _laid_out_size(chunks: tuple[Chunk, ...]) -> int:
        return sum(aligned(c.nbytes) for c in chunks)

    @staticmethod
    def _lay_out(chunks: tuple[Chunk, ...], packed_is_dst: bool) -> tuple[list[Block], list[tuple[int, int, int]]]:
        """Place a round's chunks one after another in the staging buffer (shared.lay_out)."""
        where = lay_out(chunks)
        blocks = [b._replace(dst=b.dst + off) if packed_is_dst else b._replace(src=b.src + off)
                  for c, (_, off, _) in zip(chunks, where) for b in c.blocks]
        return blocks, where

    def iteration(self) -> IterationStats:
        """Direct batch, then staged rounds (pack k, exchange k, unpack k-1), local copies after
        the first exchange is issued, and the wait for the direct batch last.

        Phases (ms, on the compute stream on GPU): issue (host time handing batches to the
        backend; near 0 on GPU, where it only queues), pack, local, transfer (waiting for a staged
        round), unpack, direct (waiting for the zero-copy batch after everything else was done), relay (the
        second hop of a relayed plan, after all of the above)."""
        cuda = self.ctx.device.type == "cuda"
        launches = 0
        clock = _Clock(cuda)
        clock.mark()
        if self.shared is not None:
            launches = self.shared.run(clock.lap, self.local)
            return IterationStats(clock.total(), clock.phase_totals(), launches)
        direct = dist.batch_isend_irecv([dist.P2POp(op, buf, peer) for op, buf, peer in self.direct]) \
            if self.direct else []
        launches += 1 if self.direct else 0
        clock.lap("issue")
        local_done = self.local is None
        pending = None
        for k, (pack, sends, recvs, unpack) in enumerate(self.rounds):
            if pack is not None:
                launches += pack()
                clock.lap("pack")
            ops = [dist.P2POp(dist.isend, buf, peer) for peer, buf in sends] + \
                  [dist.P2POp(dist.irecv, buf, peer) for peer, buf in recvs]
            works = dist.batch_isend_irecv(ops) if ops else []
            launches += 1 if ops else 0
            clock.lap("issue")
            if not local_done:
                launches += self._local(clock)
                local_done = True
            if pending is not None:
                launches += self._finish(pending, clock)
            pending = (works, unpack)
        if not local_done:
            launches += self._local(clock)
        if pending is not None:
            launches += self._finish(pending, clock)
        if direct:
            for w in direct:
                w.wait()
            clock.lap("direct")
        if self.relay is not None:
            launches += self.relay.run(clock)
        total = clock.total()
        return IterationStats(total, clock.phase_totals(), launches)

    def _local(self, clock: "_Clock") -> int:
        n = self.local() if self.local is not None else 0
        clock.lap("local")
        return n

    @staticmethod
    def _finish(pending: tuple[list, "_Step | None"], clock: "_Clock") -> int:
        works, unpack = pending
        for w in works:
            w.wait()
        clock.lap("transfer")
        n = unpack() if unpack is not None else 0
        if unpack is not None:
            clock.lap("unpack")
        return n

    def close(self) -> None:
        self.rounds = []
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        self.relay = None
        self.src_buf = self.dst_buf = None
        self.source_parts, self.destination_parts = [], []


def _forwarding(ctx: RankContext, chunk: int, threshold: int | None, layouts: ShardLayouts) -> RankBlocks:
    """This rank's hop 1 as blocks: what it forwards from its destination shard (a relay) and what it receives
    from relays. Both ends read a relay's shard layout as its destination's."""
    if not ctx.plan.relayed_bytes or ctx.destination is None:
        return RankBlocks((), (), ())

    def forwarded(role: str, rank: int) -> Storage | None:
        return layouts("destination", rank)

    return rank_blocks(ctx.plan, ctx.plan.for_rank(ctx.rank, hop=1), ctx.destination, ctx.destination, chunk,
                       threshold, forwarded)


class _Hop:
    """Hop 1 bound to the transport's buffers: zero-copy runs between destination shards, then staged rounds
    through the first staging set, each round waited for before the next (the NVLink hop is short)."""

    def __init__(self, t: StagedTransport, rb: RankBlocks) -> None:
        buf, cuda = t.dst_buf, t.cuda
        self.direct = [(dist.isend, buf[d.src: d.src + d.nbytes], d.peer) for d in rb.direct_sends] + \
                      [(dist.irecv, buf[d.dst: d.dst + d.nbytes], d.peer) for d in rb.direct_recvs]
        s_stage = t.stage_send[0] if t.stage_send else None
        r_stage = t.stage_recv[0] if t.stage_recv else None
        self.rounds = []
        for k in range(rb.rounds):
            pack, sends = t._lay_out(rb.sends[k], packed_is_dst=True)
            unpack, recvs = t._lay_out(rb.recvs[k], packed_is_dst=False)
            self.rounds.append((_Step(pack, buf, s_stage, cuda) if pack else None,
                                [dist.P2POp(dist.isend, s_stage[o: o + n], peer) for peer, o, n in sends] +
                                [dist.P2POp(dist.irecv, r_stage[o: o + n], peer) for peer, o, n in recvs],
                                _Step(unpack, r_stage, buf, cuda) if unpack else None))

    def run(self, clock: "_Clock") -> int:
        """The whole second hop, timed as phase "relay"; returns the copy launches."""
        launches = 0
        direct = dist.batch_isend_irecv([dist.P2POp(op, b, peer) for op, b, peer in self.direct]) \
            if self.direct else []
        for pack, ops, unpack in self.rounds:
            launches += pack() if pack is not None else 0
            for w in dist.batch_isend_irecv(ops) if ops else []:
                w.wait()
            launches += unpack() if unpack is not None else 0
        for w in direct:
            w.wait()
        clock.lap("relay")
        return launches


class _Clock:
    """Phase timing: CUDA events on GPU (read after the iteration), perf_counter on CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[tuple[str | None, object]] = []

    def _now(self) -> object:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def mark(self) -> None:
        self.marks.append((None, self._now()))

    def lap(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def total(self) -> float:
        """Total ms from the first mark to now; fills phases (summed) on the way."""
        self.mark()
        if self.cuda:
            self.marks[-1][1].synchronize()  # type: ignore[union-attr]
        return self._ms(self.marks[0][1], self.marks[-1][1])

    def _ms(self, a: object, b: object) -> float:
        if self.cuda:
            return a.elapsed_time(b)  # type: ignore[union-attr]
        return (b - a) * 1e3  # type: ignore[operator]

    def phase_totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:]):
            if name:
                out[name] = out.get(name, 0.0) + self._ms(a, b)
        return out
