"""One-sided refit through NVSHMEM (nvshmem4py): sources write straight into destinations' shards.

Every active rank keeps its shards in one symmetric buffer (source shards first, destination
shards after), so a destination's parameters are themselves the receive buffer: no staging, no
unpack. Each source maps every destination's buffer (nvshmem_ptr, through get_peer_tensor) and
copies all its slices, local copies included, with ONE kernel launch per iteration; a
barrier_all on the stream before and after brackets the iteration, so a destination reads only
complete data. Peers that cannot be mapped (another node without NVLink) get `put` calls instead.
Several PEs may share one GPU (shared/notes/gpu-machine.md); the torch process group (gloo)
carries NVSHMEM's unique id.
"""

from __future__ import annotations

import ctypes
import os

import torch
import torch.distributed as dist

from refit_core.blocks import Block, direct_blocks, transfer_block
from refit_core.errors import TransportError
from refit_core.memory import NVSHMEM_RESERVE_BYTES
from refit_core.storage import ALIGN, Storage, rank_storage
from refit_core.transports.base import IterationStats, RankContext
from refit_core.transports.copy import CudaBlockCopy


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def sync_mode(active_pes: int) -> str:
    """How an iteration completes: REFITCTL_NVSHMEM_SYNC=device|host, or auto (the default):
    host when PEs share a GPU (more active PEs than this node has GPUs), device otherwise."""
    mode = os.environ.get("REFITCTL_NVSHMEM_SYNC", "auto")
    if mode not in ("auto", "host", "device"):
        raise TransportError(f"REFITCTL_NVSHMEM_SYNC={mode!r}: use auto, host or device")
    if mode == "auto":
        return "host" if active_pes > torch.cuda.device_count() else "device"
    return mode


def init_nvshmem(rank: int, nranks: int, device: torch.device, group: object) -> None:
    """Initialise NVSHMEM by unique id, the id travelling over the torch (gloo) process group."""
    import nvshmem.core as nv

    try:
        from cuda.core import Device
    except ImportError:  # older cuda-python
        from cuda.core.experimental import Device
    os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
    uid = nv.get_unique_id(empty=rank != 0)
    raw = [ctypes.string_at(uid.ptr, uid._data.itemsize) if rank == 0 else None]
    dist.broadcast_object_list(raw, src=0, group=group)
    if rank != 0:
        ctypes.memmove(uid.ptr, raw[0], len(raw[0]))
    dev = Device(device.index)
    dev.set_current()
    nv.init(device=dev, uid=uid, rank=rank, nranks=nranks, initializer_method="uid")


class NvshmemTransport:
    name = "nvshmem"

    def __init__(self) -> None:
        self.src_buf: torch.Tensor | None = None
        self.dst_buf: torch.Tensor | None = None
        self.extra_bytes = 0
        self._sym: torch.Tensor | None = None

    # -- layout of every rank's symmetric buffer (pure; every rank computes all of them) --------
    def _storages(self, ctx: RankContext, rank: int) -> tuple[Storage | None, Storage | None]:
        w, inv = ctx.plan.world, ctx.plan.inventory
        s, d = w.source.local(rank), w.destination.local(rank)
        return (rank_storage(inv, w.source.layout, s) if s is not None else None,
                rank_storage(inv, w.destination.layout, d) if d is not None else None)

    def prepare(self, ctx: RankContext) -> None:
        try:
            import nvshmem.core as nv
        except ImportError as e:
            raise TransportError("--refit-method nvshmem needs nvshmem4py: pip install 'refitctl[gpu]'") from e
        self.ctx, self.nv = ctx, nv
        w = ctx.plan.world
        active = list(range(w.gpus_used))
        sizes = {}
        self.dst_offset = {}
        for r in active:
            s, d = self._storages(ctx, r)
            self.dst_offset[r] = _aligned(s.nbytes) if s else 0
            sizes[r] = self.dst_offset[r] + (d.nbytes if d else 0)
        size = max(_aligned(max(sizes.values())), ALIGN)
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(size + NVSHMEM_RESERVE_BYTES))

        init_nvshmem(ctx.rank, len(active), ctx.device, ctx.active_group)
        self._sym = nv.bytetensor((size,))
        base = self._sym.data_ptr()
        if ctx.source is not None:
            self.src_buf = self._sym[: ctx.source.nbytes]
        if ctx.destination is not None:
            off = self.dst_offset[ctx.rank]
            self.dst_buf = self._sym[off: off + ctx.destination.nbytes]

        peers = sorted(ctx.rank_plan.sends)
        mapped: dict[int, int] = {}
        self.puts: list[tuple[int, Block]] = []
        for p in peers:
            try:
                t = nv.get_peer_tensor(self._sym, p)
                mapped[p] = t.data_ptr() if t is not None else 0
            except Exception:  # noqa: BLE001 - not mappable: fall back to put
                mapped[p] = 0
        blocks: list[Block] = []
        if ctx.rank_plan.local:
            params = ctx.plan.inventory.params
            for t in ctx.rank_plan.local:
                pr = params[t.param]
                b = transfer_block(t, pr.shape, pr.split_dim, ctx.source.by_param[t.param],
                                   ctx.destination.by_param[t.param])
                blocks.append(b._replace(src=b.src + base, dst=b.dst + base + self.dst_offset[ctx.rank]))
        if ctx.source is not None:
            for peer, b in direct_blocks(ctx.plan, ctx.rank_plan, ctx.source, lambda r: self._storages(ctx, r)[1]):
                if mapped[peer]:
                    blocks.append(b._replace(src=b.src + base, dst=b.dst + mapped[peer] + self.dst_offset[peer]))
                else:
                    self.puts.append((peer, b._replace(dst=b.dst + self.dst_offset[peer])))
        self.copy = CudaBlockCopy(blocks, ctx.device)
        self.extra_bytes = (self.copy.desc.numel() * 8 if self.copy.desc is not None else 0) + \
            (size - (ctx.source.nbytes if ctx.source else 0) - (ctx.destination.nbytes if ctx.destination else 0))
        self.stream = torch.cuda.current_stream(ctx.device)
        self.sync = sync_mode(len(active))

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
        """Completion on the host: sources copy and synchronise, then a gloo barrier.

        Destination PEs never run a GPU kernel, so on a time-sliced shared GPU they do not spin in
        NVSHMEM's barrier kernel while the sources need the GPU (measured: 2x to 4.8x faster on one
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
            self.src_buf = self.dst_buf = None
            self.nv.free_tensor(self._sym)
            self._sym = None
            self.nv.finalize()
