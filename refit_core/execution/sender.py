"""FP8 destinations: the sender quantises the slices it owns, then any byte-generic transport moves them.

`QuantisingSender` wraps a transport (nccl, gloo, nvshmem). The transport is prepared on the wire
shards (wire.py): its source buffer is the send image, FP8 weights plus their scale rows laid out
like any shard buffer. The rank's own source shards stay BF16 in a buffer of their own (what the
engine fills, as training would). Each iteration, before the transport moves a byte, the sender

1. takes each quantised weight's per-block absolute maximum over the rows it holds (blocks aligned
   to the GLOBAL tensor, quantize.py);
2. completes the blocks a source TP boundary cuts (`Plan.gathers`): every active rank adds its
   partial maxima for the gathered blocks (zeros where it holds none) to one float32 vector, in
   plan order, and ONE all-reduce (max) over the active group gives every holder the whole block's
   maximum (a few bytes per cut block-row; skipped when the plan has no gathers);
3. writes the send image: FP8 weights and `weight_scale_inv` rows, and the BF16 parameters copied
   as they are (embeddings, norms, router, output layer).

That is the iteration's `quantise` phase, timed with the transfer (CUDA events on GPU). After the
transfer the send image is poisoned (0xFF: NaN in e4m3 and float32), so an iteration whose
quantisation skipped a byte cannot pass on the previous iteration's values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from refit_core.execution.quantize import FP8, block_amax, quantise_rows, scales_from_amax
from refit_core.planning.storage import Slot, Storage, rank_storage
from refit_core.execution.transports.base import (IterationStats, RankContext, ShardPart, Transport, allocate, TransportReport)
from refit_core.execution.weights import torch_dtype
from refit_core.planning import methods
from refit_core.planning.wire import scale_weights
from refit_core.planning.precision import FP8_BLOCK


@dataclass(frozen=True)
class _Piece:
    """One piece of a quantised weight this rank holds: rows [row0, row0+rows) of the (transposed,
    for a row-parallel weight) global tensor at local rows [local, local+rows); its scale rows sit
    at [scale_local, scale_local + blocks) of the local scale tensor; `gathered`: (block offset in
    this piece, offset in the all-reduced vector) for the blocks a source TP boundary cuts."""

    row0: int
    rows: int
    local: int
    scale_local: int
    gathered: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Weight:
    param: int
    scale: int
    transposed: bool
    train: Slot
    image: tuple[int, Slot]  # (send-image part, slot)
    scale_image: tuple[int, Slot]
    pieces: tuple[_Piece, ...]
    other_blocks: int  # blocks across the dimension not split (entries per gathered block row)


def _find(parts: list[ShardPart], param: int) -> tuple[int, Slot]:
    for k, (_, storage) in enumerate(parts):
        slot = storage.by_param.get(param)
        if slot is not None:
            return k, slot
    raise AssertionError(f"parameter {param} has no slot in the send image")


def gather_layout(plan) -> tuple[dict[tuple[int, int], int], int]:
    """Offsets of each gathered (scale param, block row) in the all-reduced vector, and its length:
    every rank derives the same from the plan."""
    offsets: dict[tuple[int, int], int] = {}
    n = 0
    for g in plan.gathers:
        shape = plan.params[g.param].shape
        other = shape[1 - plan.params[g.param].split_dim]
        for b in range(g.start, g.start + g.length):
            offsets[(g.param, b)] = n
            n += other
    return offsets, n


class QuantisingSender(TransportReport):
    """A transport that quantises the rank's BF16 source shards into an FP8 send image first."""

    def __init__(self, inner: Transport) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.setup_phase = getattr(inner, "setup_phase", f"{inner.name} transport set-up")

    def prepare(self, ctx: RankContext) -> None:
        self.ctx = ctx
        plan = ctx.plan
        self.inner.prepare(ctx)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.one_sided = not methods.method(self.inner.name).two_sided
        self.image = list(self.inner.source_parts)
        self.destination_parts = self.inner.destination_parts
        self.cuda = ctx.device.type == "cuda"
        local = plan.world.source.local(ctx.rank)
        self.train: Storage | None = None
        self.weights: list[_Weight] = []
        self.copies: list[tuple[Slot, int, Slot]] = []
        offsets, self.vector_len = gather_layout(plan)
        if local is not None:
            self.train = rank_storage(plan.inventory, plan.world.source.layout, local)
            self.train_buf = allocate(self.train.nbytes, ctx.device)
            self.source_parts = [(self.train_buf, self.train)]
            scale_of = {wi: si for si, wi in scale_weights(plan).items()}
            for slot in self.train.slots:
                if slot.param in scale_of:
                    self.weights.append(self._weight(plan, slot, scale_of[slot.param], offsets))
                else:
                    self.copies.append((slot, *_find(self.image, slot.param)))
        image_bytes = sum(st.nbytes for _, st in self.image)
        self.extra_bytes = self.inner.extra_bytes + image_bytes + 4 * self.vector_len
        self.measured_extra_bytes = self.inner.measured_extra_bytes
        self.info = {**self.inner.info, "precision": plan.precision, "send_image_bytes": image_bytes,
                     "quantised_weights": len(self.weights), "gathered_amax_floats": self.vector_len}
        backend = dist.get_backend(ctx.active_group) if self.vector_len and dist.is_initialized() else None
        self.vector_device = ctx.device if backend == "nccl" else torch.device("cpu")
        for buf, _ in self.image:
            buf.fill_(0xFF)

    def _weight(self, plan, slot: Slot, si: int, offsets: dict[tuple[int, int], int]) -> _Weight:
        p = plan.inventory.params[slot.param]
        transposed = p.split_dim == 1
        image = _find(self.image, slot.param)
        scale_image = _find(self.image, si)
        pieces = []
        scale_local = 0
        for pc in slot.pieces:
            b0, b1 = pc.start // FP8_BLOCK, -(-pc.stop // FP8_BLOCK)
            gathered = tuple((b - b0, offsets[(si, b)]) for b in range(b0, b1) if (si, b) in offsets)
            pieces.append(_Piece(pc.start, pc.length, pc.local_start, scale_local, gathered))
            scale_local += b1 - b0
        other = -(-p.shape[0 if transposed else 1] // FP8_BLOCK)
        return _Weight(slot.param, si, transposed, slot, image, scale_image, tuple(pieces), other)

    # -- one iteration --------------------------------------------------------------------------
    def _view(self, buf: torch.Tensor, slot: Slot, dtype: torch.dtype, transposed: bool) -> torch.Tensor:
        v = buf[slot.offset: slot.offset + slot.nbytes].view(dtype).view(slot.shape)
        return v.t() if transposed else v

    def quantise(self) -> None:
        """Write the send image from the BF16 shards (steps 1-3 of the module's docstring)."""
        params = self.ctx.plan.inventory.params
        partial: list[list[torch.Tensor]] = []
        vector = torch.zeros(self.vector_len, dtype=torch.float32, device=self.vector_device) \
            if self.vector_len else None
        for w in self.weights:
            x = self._view(self.train_buf, w.train, torch_dtype(params[w.param].dtype), w.transposed)
            amaxes = [block_amax(x[pc.local: pc.local + pc.rows], pc.row0) for pc in w.pieces]
            partial.append(amaxes)
            if vector is not None:
                for pc, a in zip(w.pieces, amaxes):
                    for k, off in pc.gathered:
                        seg = vector[off: off + w.other_blocks]
                        torch.maximum(seg, a[k].to(vector.device), out=seg)
        if vector is not None:
            dist.all_reduce(vector, op=dist.ReduceOp.MAX, group=self.ctx.active_group)
            vector = vector.to(self.ctx.device)
        for w, amaxes in zip(self.weights, partial):
            x = self._view(self.train_buf, w.train, torch_dtype(params[w.param].dtype), w.transposed)
            q = self._view(self.image[w.image[0]][0], w.image[1], FP8, w.transposed)
            s = self._view(self.image[w.scale_image[0]][0], w.scale_image[1], torch.float32, w.transposed)
            for pc, a in zip(w.pieces, amaxes):
                for k, off in pc.gathered:
                    a[k] = vector[off: off + w.other_blocks]  # type: ignore[index]
                scale = scales_from_amax(a)
                s[pc.scale_local: pc.scale_local + scale.shape[0]] = scale
                quantise_rows(x[pc.local: pc.local + pc.rows], scale, pc.row0, out=q[pc.local: pc.local + pc.rows])
        for slot, part, img in self.copies:
            self.image[part][0][img.offset: img.offset + img.nbytes].copy_(
                self.train_buf[slot.offset: slot.offset + slot.nbytes])

    def _quantise_cuda(self) -> None:
        """On a GPU the quantisation is hundreds of small kernels (a few per weight piece): captured
        once into a CUDA graph and replayed, so their launches cost one. Not when the plan gathers
        cut blocks: their all-reduce runs between the two halves (on gloo it cannot be captured)."""
        if self.vector_len or not self.weights:
            self.quantise()
            return
        if self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.quantise()  # warm (allocations, kernels loaded) outside the capture
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.quantise()
            self.graph = graph
        self.graph.replay()

    def iteration(self) -> IterationStats:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._quantise_cuda()
            end.record()
        else:
            t0 = time.perf_counter()
            self.quantise()
            q_ms = (time.perf_counter() - t0) * 1e3
        if self.one_sided:
            # Peers read (pull) or the transport's own stream copies (push) the send image: every PE's
            # image must be written before any copy starts. Two-sided transports order this themselves.
            if self.cuda:
                end.synchronize()
            dist.barrier(group=self.ctx.active_group)
        stats = self.inner.iteration()
        if self.cuda:
            end.synchronize()
            q_ms = start.elapsed_time(end)
        for buf, _ in self.image:
            buf.fill_(0xFF)
        return IterationStats(q_ms + stats.time_ms, {"quantise": q_ms, **stats.phases_ms}, stats.launches)

    def close(self) -> None:
        self.inner.close()
        self.image, self.source_parts, self.destination_parts = [], [], []
        self.train_buf = None  # type: ignore[assignment]


def for_precision(transport: Transport, precision: str) -> Transport:
    """The transport itself for BF16 destinations; wrapped in a quantising sender for FP8."""
    return transport if precision == "bf16" else QuantisingSender(transport)
