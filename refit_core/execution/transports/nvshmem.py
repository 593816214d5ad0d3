"""One-sided refit through NVSHMEM (nvshmem4py): one rank copies straight between shards.

The role peers reach lives in the symmetric heap (placement.py): the destination shards when
sources write into them (push), or the source shards when destinations read from them (pull),
whichever leaves less heap unused on the worst rank; the other role fills the rest of its
rank's heap and spills into private memory. So a destination's parameters are themselves the
receive buffer: no staging, no unpack, and no GPU holds much more than its shards. The copying
rank maps every peer's heap (nvshmem_ptr, through get_peer_tensor) and copies all its slices,
local copies included, with ONE kernel launch per iteration; a barrier before and after
brackets the iteration, so a destination reads only complete data. Peers that cannot be mapped
(another node without NVLink) get `put` calls instead, in the `all` placement. Several PEs may
share one GPU (docs/running-on-a-cluster.md); the torch process group (gloo) carries NVSHMEM's
unique id.
"""

from __future__ import annotations

import ctypes
from refit_core import environment

import torch
import torch.distributed as dist

from refit_core.planning.blocks import Block, Where, one_sided_blocks
from refit_core.planning.devices import shares_gpus
from refit_core.errors import TransportError
from refit_core.config import SYNC_MODES
from refit_core.planning.memory import NVSHMEM_GRANULARITY_BYTES, NVSHMEM_RESERVE_BYTES
from refit_core.planning.placement import Part, nvshmem_direction, place
from refit_core.planning.storage import Storage
from refit_core.planning.wire import rank_storages
from refit_core.execution.transports.base import IterationStats, RankContext, ShardPart, allocate, TransportReport
from refit_core.execution.transports.copy import CudaBlockCopy


def sync_mode(mode: str, active_pes: int, shared: bool | None = None) -> str:
    """How an iteration completes for --nvshmem-sync `mode` (RunSettings.nvshmem_sync): device or host as
    given, or for auto: host when PEs share a GPU (`shared`, from the run's rank -> GPU map; without
    one: more active PEs than this node has GPUs), device otherwise."""
    if mode not in SYNC_MODES:
        raise TransportError(f"--nvshmem-sync {mode!r}: use {', '.join(SYNC_MODES)}")
    if mode == "auto":
        if shared is None:
            shared = active_pes > torch.cuda.device_count()
        return "host" if shared else "device"
    return mode


def init_nvshmem(rank: int, nranks: int, device: torch.device, group: object) -> None:
    """Initialise NVSHMEM by unique id, the id travelling over the torch (gloo) process group."""
    import nvshmem.core as nv

    try:
        from cuda.core import Device
    except ImportError:  # older cuda-python
        from cuda.core.experimental import Device
    uid = nv.get_unique_id(empty=rank != 0)
    raw = [ctypes.string_at(uid.ptr, uid._data.itemsize) if rank == 0 else None]
    dist.broadcast_object_list(raw, src=0, group=group)
    if rank != 0:
        ctypes.memmove(uid.ptr, raw[0], len(raw[0]))
    dev = Device(device.index)
    dev.set_current()
    nv.init(device=dev, uid=uid, rank=rank, nranks=nranks, initializer_method="uid")


class NvshmemTransport(TransportReport):
    name = "nvshmem"
    setup_phase = "NVSHMEM init"  # the watchdog's name for prepare(): nvshmem init has no timeout of its own

    def __init__(self) -> None:
        super().__init__()
        self._sym: torch.Tensor | None = None
        self._private: torch.Tensor | None = None

    def prepare(self, ctx: RankContext) -> None:
        try:
            import nvshmem.core as nv
        except ImportError as e:
            raise TransportError("--refit-method nvshmem needs nvshmem4py: pip install 'refitctl[gpu]'") from e
        self.ctx, self.nv = ctx, nv
        w = ctx.plan.world
        active = list(range(w.gpus_used))
        storages = [rank_storages(ctx.plan, r) for r in active]  # every peer's shards (pure)
        direction = nvshmem_direction(w, ctx.config.run.nvshmem_placement, ctx.config.hardware.gpus_per_node)
        self.placement = placement = place(storages, direction)
        me = placement.ranks[ctx.rank]
        # Physical heap memory comes in chunks of NVSHMEM_GRANULARITY_BYTES; NVSHMEM's default (512 MiB) left up
        # to that much unused per PE (measured 849 -> 214 MB per PE beyond the shards, docs/benchmarks.md).
        environment.export({"NVSHMEM_SYMMETRIC_SIZE": str(placement.heap_bytes + NVSHMEM_RESERVE_BYTES),
                            "NVSHMEM_CUMEM_GRANULARITY": str(NVSHMEM_GRANULARITY_BYTES)}, overwrite=False)

        free_before = self._free_memory(ctx)
        init_nvshmem(ctx.rank, len(active), ctx.device, ctx.active_group)
        free_init = self._free_memory(ctx)
        self._sym = nv.bytetensor((placement.heap_bytes,))
        free_heap = self._free_memory(ctx)
        if me.private_bytes:
            self._private = allocate(me.private_bytes, ctx.device)
        self.source_parts = self._parts(me.source)
        self.destination_parts = self._parts(me.destination)
        blocks = self._copy_blocks(storages)
        self.copy = CudaBlockCopy(blocks, ctx.device)
        shards = sum(st.nbytes for _, st in self.source_parts + self.destination_parts)
        self.extra_bytes = (self.copy.desc.numel() * 8 if self.copy.desc is not None else 0) + \
            placement.heap_bytes + me.private_bytes - shards
        self.measured_extra_bytes = self._measure(ctx, free_before, shards)
        self.stream = torch.cuda.current_stream(ctx.device)
        placed = ctx.devices
        self.sync = sync_mode(ctx.config.run.nvshmem_sync, len(active), None if placed is None else
                              shares_gpus(placed.devices, active, placed.ranks_per_node))
        self.info = {"placement": placement.direction, "heap_bytes": placement.heap_bytes,
                     "private_bytes": me.private_bytes, "unused_heap_bytes": placement.unused_heap(ctx.rank),
                     "sync": self.sync, "puts": len(self.puts),
                     # drops in free GPU memory (whole GPU: all PEs sharing it) across init and heap allocation
                     "gpu_init_bytes": free_before - free_init, "gpu_heap_bytes": free_init - free_heap}

    def _parts(self, ps: tuple[Part, ...]) -> list[ShardPart]:
        """Where a role's shards live: slices of the symmetric heap, or of this PE's private memory."""
        out = []
        for part in ps:
            buf = self._sym if part.in_heap else self._private
            assert buf is not None
            out.append((buf[part.start: part.start + max(part.storage.nbytes, 1)], part.storage))
        return out

    def _copy_blocks(self, storages: list[tuple[Storage | None, Storage | None]]) -> list[Block]:
        """This PE's copies as absolute addresses; the copying rank reaches its peers' heaps (sources write:
        push, all; destinations read: pull). A peer that cannot be mapped gets NVSHMEM puts (`all` only)."""
        ctx, placement = self.ctx, self.placement
        assert self._sym is not None
        bases = {True: self._sym.data_ptr(), False: self._private.data_ptr() if self._private is not None else 0}
        copies = one_sided_blocks(ctx.plan, ctx.rank_plan, placement, storages)
        mapped: dict[int, int] = {}
        for p in sorted({x.rank for s, d, _ in copies for x in (s, d)} - {ctx.rank}):
            try:
                t = self.nv.get_peer_tensor(self._sym, p)
                mapped[p] = t.data_ptr() if t is not None else 0
            except Exception:  # noqa: BLE001 - not mappable: put fallback (layout `all` only)
                mapped[p] = 0
        unmapped = [p for p, ptr in mapped.items() if not ptr]
        if unmapped and placement.direction != "all":
            raise TransportError(
                f"rank {ctx.rank}: PEs {unmapped} cannot be mapped (no NVLink/P2P path); "
                "use --nvshmem-placement all to use NVSHMEM put for them")

        def base(w: Where) -> int:
            return bases[w.in_heap] if w.rank == ctx.rank else mapped[w.rank]

        blocks: list[Block] = []
        self.puts: list[tuple[int, Block]] = []
        for s, d, b in copies:
            if d.rank != ctx.rank and not mapped[d.rank]:  # layout `all`: heap offsets on both sides
                self.puts.append((d.rank, b))
            else:
                blocks.append(b._replace(src=b.src + base(s), dst=b.dst + base(d)))
        return blocks

    @staticmethod
    def _free_memory(ctx: RankContext) -> int:
        """Free device memory once every PE has its CUDA context and has stopped allocating."""
        torch.empty(1, device=ctx.device)
        torch.cuda.synchronize(ctx.device)
        dist.barrier(group=ctx.active_group)
        free = torch.cuda.mem_get_info(ctx.device)[0]
        dist.barrier(group=ctx.active_group)
        return free

    def _measure(self, ctx: RankContext, free_before: int, shards: int) -> int:
        """Device memory this PE's transport took beyond its shards (NVSHMEM's own state, heap
        slack, private remainder, copy descriptors): the drop in free memory across prepare,
        shared evenly among the PEs on the same GPU, minus their shard bytes."""
        import socket

        free_after = self._free_memory(ctx)
        me = (socket.gethostname(), str(torch.cuda.get_device_properties(ctx.device).uuid), shards)
        everyone: list[object] = [None] * dist.get_world_size(ctx.active_group)
        dist.all_gather_object(everyone, me, group=ctx.active_group)
        here = [e for e in everyone if e[:2] == me[:2]]
        return (free_before - free_after - sum(e[2] for e in here)) // len(here)

    def _put_fallback(self) -> None:
        """nvshmem put for peers without a load/store mapping: a contiguous block in one call,
        a strided one row by row."""
        for peer, b in self.puts:
            if b.src_stride == b.row_bytes == b.dst_stride:
                n = b.nbytes
                self.nv.put(self._sym[b.dst: b.dst + n], self._sym[b.src: b.src + n], remote_pe=peer, stream=self.stream)
                continue
            for r in range(b.rows):
                s = b.src + r * b.src_stride
                d = b.dst + r * b.dst_stride
                self.nv.put(self._sym[d: d + b.row_bytes], self._sym[s: s + b.row_bytes],
                            remote_pe=peer, stream=self.stream)

    def iteration(self) -> IterationStats:
        if self.sync == "host":
            return self._iteration_host()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        self.nv.barrier_all(stream=self.stream)
        self.copy(self.stream)
        if self.puts:
            self._put_fallback()
        self.nv.barrier_all(stream=self.stream)
        end.record(self.stream)
        end.synchronize()
        ms = start.elapsed_time(end)
        return IterationStats(ms, {"transfer": ms}, 1 + (1 if self.copy.count else 0) + 1 + len(self.puts))

    def _iteration_host(self) -> IterationStats:
        """Completion on the host: the copying ranks copy and synchronise, then a gloo barrier.

        The other PEs never run a GPU kernel, so on a time-sliced shared GPU they do not spin in
        NVSHMEM's barrier kernel while the copying ranks need the GPU (measured: 2x to 4.8x faster on one
        H100, docs/benchmarks.md). Timed on the host, barrier to barrier.
        """
        import time

        t0 = time.perf_counter()
        self.copy(self.stream)
        if self.puts:
            self._put_fallback()
            self.nv.quiet(stream=self.stream)
        self.stream.synchronize()
        dist.barrier(group=self.ctx.active_group)
        ms = (time.perf_counter() - t0) * 1e3
        return IterationStats(ms, {"transfer": ms}, 1 if self.copy.count else 0)

    def close(self) -> None:
        if self._sym is not None:
            torch.cuda.synchronize()
            self.source_parts, self.destination_parts = [], []
            self._private = None
            self.nv.free_tensor(self._sym)
            self._sym = None
            self.nv.finalize()


class HeapStages:
    """Staging in NVSHMEM's symmetric heap for the caller's tensors (refit_core/library, shared.py's rounds):
    each PE packs its round into its heap buffer, its receivers read it through their mapping of that PE's
    heap (nvshmem_ptr). The heap is symmetric, so every PE allocates the largest staging any PE needs, after
    the gather that tells it; NVSHMEM starts then, with a heap of that size. An iteration's barriers are on
    the host (the stream drained, then the process group's barrier), as `--nvshmem-sync host`."""

    def __init__(self, ctx: RankContext) -> None:
        self.ctx = ctx
        self.stage: torch.Tensor | None = None
        self.nv = None

    def create(self, nbytes: int) -> str:
        return "heap"

    def mine(self, every: list) -> torch.Tensor:
        try:
            import nvshmem.core as nv
        except ImportError as e:
            raise TransportError("--refit-method nvshmem needs nvshmem4py: pip install 'refitctl[gpu]'") from e
        ctx, size = self.ctx, max(p.nbytes for p in every)
        environment.export({"NVSHMEM_SYMMETRIC_SIZE": str(size + NVSHMEM_RESERVE_BYTES),
                            "NVSHMEM_CUMEM_GRANULARITY": str(NVSHMEM_GRANULARITY_BYTES)}, overwrite=False)
        init_nvshmem(ctx.rank, dist.get_world_size(ctx.active_group), ctx.device, ctx.active_group)
        self.nv = nv
        self.stage = nv.bytetensor((size,))
        return self.stage

    def peer(self, rank: int, every: list) -> torch.Tensor:
        assert self.nv is not None and self.stage is not None
        t = self.nv.get_peer_tensor(self.stage, rank)
        if t is None:
            raise TransportError(f"rank {self.ctx.rank}: PE {rank}'s heap cannot be mapped (no NVLink/P2P path): "
                                 "refit the caller's tensors with nvshmem on one node's GPUs, or use nccl")
        return t

    def barrier(self) -> None:
        torch.cuda.current_stream(self.ctx.device).synchronize()
        dist.barrier(group=self.ctx.active_group)

    def mapped(self) -> None:
        pass

    def close(self) -> None:
        if self.nv is not None and self.stage is not None:
            torch.cuda.synchronize(self.ctx.device)
            self.nv.free_tensor(self.stage)
            self.stage = None
            self.nv.finalize()
