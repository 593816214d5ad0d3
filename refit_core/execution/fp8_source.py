"""A sender's wire shards computed where they are needed, from its BF16 shards: no FP8 send image.

The wire source (wire.py: FP8 weights, their `weight_scale_inv` rows, BF16 parameters as they are)
is never held whole. Each iteration the rank first computes its scales (`scales()`):

1. each quantised weight's per-block absolute maximum over the rows it holds (blocks aligned to the
   GLOBAL tensor, quantize.py), written where the block's scale will be;
2. the blocks a source TP boundary cuts (`Plan.gathers`): every active rank puts its partial maxima
   (zeros where it holds none) into one float32 vector, in plan order, and ONE all-reduce (max)
   over the active group completes them (skipped when the plan has no gathers);
3. scale_inv = amax / 448 (1.0 for an all-zero block), in place.

Then any list of wire-source byte blocks (blocks.py) can be produced into any buffer by a
`FillStep`, prepared once: a staging bucket about to be sent (two-sided transports pack with it),
a local destination shard (local copies: quantised inside the copy), or a whole send image (the
one-sided path, whose peers read it). FP8 weight bytes are quantised from BF16 on the way
(fp8_kernel.py: Triton on a GPU, the reference's torch operations otherwise); scale rows are copied
from the small scale buffer and BF16 parameters from the BF16 shards.

Memory beyond the BF16 shards: the scale buffer (4 bytes per 128 x 128 block held), two int32
index tables (one entry per local row and column of each quantised weight), the gather vector, and
the kernels' descriptor tables.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.distributed as dist

from refit_core.execution.fp8_kernel import (AmaxRect, QuantRect, TritonAmax, TritonQuantise, quantise_rects_torch,
                                             triton_available)
from refit_core.execution.quantize import block_amax, scales_from_amax
from refit_core.execution.storage import ALIGN, Slot, Storage, rank_storage
from refit_core.execution.transports.base import allocate
from refit_core.execution.transports.blocks import Block
from refit_core.execution.transports.copy import CudaBlockCopy, absolute, copy_blocks_torch, cuda_copy_available
from refit_core.execution.weights import torch_dtype
from refit_core.execution.wire import scale_weights, wire_storage
from refit_core.planning.plan import Plan
from refit_core.planning.precision import FP8_BLOCK


@dataclass(frozen=True)
class Piece:
    """One piece of a quantised weight this rank holds, along its split dimension: global indices
    [row0, row0+rows) at local [local, local+rows); its scale rows sit at [scale_local, +blocks) of
    the local scale tensor; `gathered`: (block offset in this piece, offset in the all-reduced vector)."""

    row0: int
    rows: int
    local: int
    scale_local: int
    gathered: tuple[tuple[int, int], ...]

    @property
    def blocks(self) -> tuple[int, int]:
        return self.row0 // FP8_BLOCK, -(-(self.row0 + self.rows) // FP8_BLOCK)


@dataclass(frozen=True)
class Weight:
    """A quantised weight's shard: BF16 in `train`, FP8 in `wire`, its scales at float `scale_off` of
    the scale buffer (`scale_shape`, as the wire storage lays them out); `index` the (rows, columns)
    offsets of its scale-index tables; `transposed`: split along columns (row-parallel)."""

    param: int
    scale: int
    transposed: bool
    train: Slot
    wire: Slot
    scale_off: int
    scale_shape: tuple[int, int]
    index: tuple[int, int]
    pieces: tuple[Piece, ...]
    other_blocks: int


def gather_layout(plan: Plan) -> tuple[dict[tuple[int, int], int], int]:
    """Offsets of each gathered (scale param, block row) in the all-reduced vector, and its length:
    every rank derives the same from the plan."""
    offsets: dict[tuple[int, int], int] = {}
    n = 0
    for g in plan.gathers:
        p = plan.params[g.param]
        other = p.shape[1 - p.split_dim]
        for b in range(g.start, g.start + g.length):
            offsets[(g.param, b)] = n
            n += other
    return offsets, n


def _pieces(slot: Slot, si: int, offsets: dict[tuple[int, int], int]) -> tuple[Piece, ...]:
    out = []
    scale_local = 0
    for pc in slot.pieces:
        b0, b1 = pc.start // FP8_BLOCK, -(-pc.stop // FP8_BLOCK)
        gathered = tuple((b - b0, offsets[(si, b)]) for b in range(b0, b1) if (si, b) in offsets)
        out.append(Piece(pc.start, pc.length, pc.local_start, scale_local, gathered))
        scale_local += b1 - b0
    return tuple(out)


def _split_index(pieces: tuple[Piece, ...], length: int) -> list[int]:
    """Scale index (along the split dimension) of each local index along it."""
    out = [0] * length
    for pc in pieces:
        b0 = pc.row0 // FP8_BLOCK
        for k in range(pc.rows):
            out[pc.local + k] = pc.scale_local + (pc.row0 + k) // FP8_BLOCK - b0
    return out


class Fp8Source:
    """This source rank's BF16 shards, its scales, and the means to produce any wire bytes from them."""

    def __init__(self, plan: Plan, rank: int, device: torch.device, group: object,
                 use_triton: bool | None = None) -> None:
        """`use_triton`: None picks the Triton kernels on a GPU where triton imports (the tests force
        them on CPU tensors under Triton's interpreter)."""
        self.plan, self.device, self.group = plan, device, group
        local = plan.world.source.local(rank)
        layout = plan.world.source.layout
        self.train = rank_storage(plan.inventory, layout, local)
        self.wire = wire_storage(plan, layout, local)
        self.train_buf = allocate(self.train.nbytes + self.train.nbytes % 2, device)
        self.cuda = device.type == "cuda"
        self.triton = (self.cuda and triton_available()) if use_triton is None else use_triton
        offsets, self.vector_len = gather_layout(plan)
        weight_of = scale_weights(plan)
        scale_of = {wi: si for si, wi in weight_of.items()}
        self.scale_at: dict[int, int] = {}  # scale param -> byte offset in the scale buffer
        floats = 0
        for slot in self.wire.slots:
            if slot.param in weight_of:
                self.scale_at[slot.param] = floats * 4
                floats += -(-slot.nbytes // ALIGN) * ALIGN // 4
        self.scale_buf = allocate(floats * 4, device)
        index: list[int] = []
        self.weights: list[Weight] = []
        for slot in self.train.slots:
            if slot.param in scale_of:
                self.weights.append(self._weight(slot, scale_of[slot.param], offsets, index))
        self.index = torch.tensor(index or [0], dtype=torch.int32, device=device)
        dtypes = {self.train.by_param[w.param].itemsize for w in self.weights}
        self.dtype = torch_dtype(plan.inventory.params[self.weights[0].param].dtype) if self.weights else torch.bfloat16
        if len(dtypes) > 1:
            raise AssertionError("quantised weights of several dtypes in one shard")
        self._gather_maps(device)
        self.amax_kernel = TritonAmax(self._amax_rects(), device) if self.triton else None
        self._wire_offsets = [s.offset for s in self.wire.slots]

    def _weight(self, slot: Slot, si: int, offsets: dict[tuple[int, int], int], index: list[int]) -> Weight:
        p = self.plan.inventory.params[slot.param]
        transposed = p.split_dim == 1
        pieces = _pieces(slot, si, offsets)
        sslot = self.wire.by_param[si]
        rows, cols = slot.shape
        split = _split_index(pieces, cols if transposed else rows)
        whole = [i // FP8_BLOCK for i in range(rows if transposed else cols)]
        at = (len(index), len(index) + rows)
        index += (whole + split) if transposed else (split + whole)
        other = -(-p.shape[0 if transposed else 1] // FP8_BLOCK)
        return Weight(slot.param, si, transposed, slot, self.wire.by_param[slot.param], self.scale_at[si] // 4,
                      (sslot.shape[0], sslot.shape[1]), at, pieces, other)

    def _scale_pos(self, w: Weight, block_row: int, col: int) -> int:
        """Float offset in the scale buffer of scale (split-dim block row, other-dim block) of `w`."""
        if w.transposed:
            return w.scale_off + col * w.scale_shape[1] + block_row
        return w.scale_off + block_row * w.scale_shape[1] + col

    def _gather_maps(self, device: torch.device) -> None:
        """Which scale-buffer floats feed which entries of the all-reduced vector."""
        src: list[int] = []
        dst: list[int] = []
        for w in self.weights:
            for pc in w.pieces:
                for k, off in pc.gathered:
                    for c in range(w.other_blocks):
                        src.append(self._scale_pos(w, pc.scale_local + k, c))
                        dst.append(off + c)
        backend = dist.get_backend(self.group) if self.vector_len and dist.is_initialized() else None
        self.vector_device = device if backend == "nccl" else torch.device("cpu")
        self.gather_src = torch.tensor(src, dtype=torch.int64, device=device)
        self.gather_dst = torch.tensor(dst, dtype=torch.int64, device=self.vector_device)

    def _amax_rects(self) -> list[AmaxRect]:
        """Every block piece of every weight, in memory order of the BF16 shard (for the Triton pass)."""
        out = []
        for w in self.weights:
            rows, cols = w.train.shape
            base = w.train.offset // w.train.itemsize
            full = rows if w.transposed else cols  # the dimension held whole
            for pc in w.pieces:
                b0, b1 = pc.blocks
                for b in range(b0, b1):
                    lo, hi = max(b * FP8_BLOCK, pc.row0), min((b + 1) * FP8_BLOCK, pc.row0 + pc.rows)
                    first = pc.local + lo - pc.row0
                    for c in range(-(-full // FP8_BLOCK)):
                        n = min(FP8_BLOCK, full - c * FP8_BLOCK)
                        pos = self._scale_pos(w, pc.scale_local + b - b0, c)
                        if w.transposed:
                            out.append(AmaxRect(base + c * FP8_BLOCK * cols + first, cols, n, hi - lo, pos))
                        else:
                            out.append(AmaxRect(base + first * cols + c * FP8_BLOCK, cols, hi - lo, n, pos))
        return out

    @property
    def extra_bytes(self) -> int:
        """Device bytes beyond the BF16 shards: scales, index tables, gather maps, amax descriptors."""
        n = self.scale_buf.numel() + self.index.numel() * 4 + (self.gather_src.numel() * 8) * 2
        return n + (self.amax_kernel.desc_bytes if self.amax_kernel else 0) + 4 * self.vector_len

    # -- each iteration ---------------------------------------------------------------------------
    def _view(self, buf: torch.Tensor, offset: int, nbytes: int, shape: tuple[int, ...], dtype: torch.dtype,
              transposed: bool) -> torch.Tensor:
        v = buf[offset: offset + nbytes].view(dtype).view(shape)
        return v.t() if transposed else v

    def _amax_torch(self) -> None:
        for w in self.weights:
            x = self._view(self.train_buf, w.train.offset, w.train.nbytes, w.train.shape, self.dtype, w.transposed)
            n = w.scale_shape[0] * w.scale_shape[1] * 4
            s = self._view(self.scale_buf, w.scale_off * 4, n, w.scale_shape, torch.float32, w.transposed)
            for pc in w.pieces:
                a = block_amax(x[pc.local: pc.local + pc.rows], pc.row0)
                s[pc.scale_local: pc.scale_local + a.shape[0]] = a

    def scales(self) -> None:
        """Steps 1-3 of the module's docstring: every scale this rank sends, in the scale buffer."""
        floats = self.scale_buf.view(torch.float32) if self.scale_buf.numel() % 4 == 0 else None
        if self.amax_kernel is not None:
            self.amax_kernel(self.train_buf.view(self.dtype), floats)
        else:
            self._amax_torch()
        if self.vector_len:
            vector = torch.zeros(self.vector_len, dtype=torch.float32, device=self.vector_device)
            if self.gather_src.numel():
                vector.scatter_reduce_(0, self.gather_dst, floats[self.gather_src].to(self.vector_device), "amax")
            dist.all_reduce(vector, op=dist.ReduceOp.MAX, group=self.group)
            if self.gather_src.numel():
                floats[self.gather_src] = vector[self.gather_dst].to(self.device)
        if floats is not None:
            floats.copy_(scales_from_amax(floats))

    def poison(self) -> None:
        """0xFF (NaN) in every scale: an iteration that skipped `scales()` cannot pass on old ones."""
        self.scale_buf.fill_(0xFF)

    def step(self, blocks: list[Block], dst: torch.Tensor) -> "FillStep":
        """A prepared producer of wire-source `blocks` (src: wire offsets) into `dst` (dst offsets)."""
        return FillStep(self, blocks, dst)

    def locate(self, b: Block) -> Slot:
        """The wire slot block `b` reads from (a block never spans two)."""
        i = bisect.bisect_right(self._wire_offsets, b.src) - 1
        slot = self.wire.slots[max(i, 0)]
        last = b.src + (b.rows - 1) * b.src_stride + b.row_bytes
        if i < 0 or last > slot.offset + slot.nbytes:
            raise AssertionError(f"block {b} is not inside one wire slot")
        return slot

    def image_blocks(self, storage: Storage) -> list[Block]:
        """Blocks that write every slot of `storage` (a send image laid out its own way) whole."""
        out = []
        for s in storage.slots:
            w = self.wire.by_param[s.param]
            row = s.nbytes // s.shape[0] if len(s.shape) == 2 else s.nbytes
            rows = s.shape[0] if len(s.shape) == 2 else 1
            out.append(Block(w.offset, row, s.offset, row, rows, row))
        return out


class FillStep:
    """Wire-source blocks produced into one buffer, split once by kind: BF16 parameters copied from
    the BF16 shards, scale rows copied from the scale buffer, FP8 weights quantised on the way."""

    def __init__(self, source: Fp8Source, blocks: list[Block], dst: torch.Tensor) -> None:
        self.source, self.dst = source, dst
        weights = {w.param: w for w in source.weights}
        plain: list[Block] = []
        scales: list[Block] = []
        self.rects: list[QuantRect] = []
        for b in blocks:
            slot = source.locate(b)
            delta = b.src - slot.offset
            if slot.param in weights:
                self.rects.append(_rect(weights[slot.param], b, delta))
            elif slot.param in source.scale_at:
                scales.append(b._replace(src=source.scale_at[slot.param] + delta))
            else:
                plain.append(b._replace(src=source.train.by_param[slot.param].offset + delta))
        self.plain, self.scales = plain, scales
        cuda = source.cuda and cuda_copy_available()
        self.copies = [CudaBlockCopy(absolute(bs, buf.data_ptr(), dst.data_ptr()), dst.device)
                       for bs, buf in ((plain, source.train_buf), (scales, source.scale_buf)) if bs] if cuda else None
        self.kernel = TritonQuantise(self.rects, dst.device) if source.triton and self.rects else None

    @property
    def desc_bytes(self) -> int:
        n = sum(c.desc.numel() * 8 for c in self.copies or () if c.desc is not None)
        return n + (self.kernel.desc_bytes if self.kernel else 0)

    def __call__(self) -> int:
        """Produce the bytes; returns kernel launches (GPU) or copy operations (CPU)."""
        src = self.source
        n = 0
        if self.copies is not None:
            for c in self.copies:
                c()
                n += 1
        else:
            copy_blocks_torch(self.plain, src.train_buf, self.dst)
            copy_blocks_torch(self.scales, src.scale_buf, self.dst)
            n += len(self.plain) + len(self.scales)
        if self.rects:
            x, s = src.train_buf.view(src.dtype), src.scale_buf.view(torch.float32)
            if self.kernel is not None:
                n += self.kernel(x, self.dst, s, src.index)
            else:
                n += quantise_rects_torch(self.rects, x, self.dst, s, src.index)
        return n


def _rect(w: Weight, b: Block, delta: int) -> QuantRect:
    """The FP8 bytes of block `b` (at `delta` bytes into the weight's wire slot) as a rectangle."""
    cols = w.wire.shape[1]
    i0, j0 = divmod(delta, cols)
    if (b.rows > 1 and b.src_stride != cols) or j0 + b.row_bytes > cols:
        raise AssertionError(f"block {b} of an FP8 weight is not a rectangle of its rows")
    base = w.train.offset // w.train.itemsize
    return QuantRect(base + i0 * cols + j0, cols, b.dst, b.dst_stride, w.scale_off, w.scale_shape[1],
                     w.index[0] + i0, w.index[1] + j0, b.rows, b.row_bytes)
