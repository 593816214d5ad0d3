"""Which bytes a sender's FP8 quantiser reads and writes: pure descriptors, no torch.

From the plan alone, for one source rank: its BF16 shards (`train`), its wire shards (`wire`,
wire.py), each quantised weight's pieces along its split dimension with where their scales sit,
the blocks a source TP boundary cuts (`Piece.gathered`: their maxima need the all-reduce), the
scale-index tables the quantise kernel looks scales up with, the block pieces of the scale pass
(`amax_rects`), and `split(blocks)`: any wire-source byte blocks (blocks.py) as BF16 copies, scale
copies and rectangles to quantise. fp8_source.py binds them to buffers; a transport that moves
wire bytes anywhere (a staging bucket, a local shard, a peer's heap) asks `split` what to run.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import NamedTuple

from refit_core.planning.storage import ALIGN, Slot, Storage, rank_storage
from refit_core.planning.blocks import Block
from refit_core.planning.wire import scale_weights, wire_storage
from refit_core.planning.plan import Plan
from refit_core.planning.precision import FP8_BLOCK


class AmaxRect(NamedTuple):
    """A block piece: `rows` x `cols` (each <= 128) elements at element `x_off` (row stride `x_stride`)
    of the BF16 buffer; its max |w| goes to float32 element `out` of the amax buffer."""

    x_off: int
    x_stride: int
    rows: int
    cols: int
    out: int


class QuantRect(NamedTuple):
    """`rows` x `cols` elements of a weight shard to quantise. Offsets in elements: `x_off` in the BF16
    buffer, `o_off` (bytes) in the output, `s_off` in the float32 scale buffer where the shard's
    scale tensor starts (row stride `s_stride`); the element at (i, j) takes the scale at
    s_off + rows_idx[srow + i] * s_stride + cols_idx[scol + j] of the int32 index table."""

    x_off: int
    x_stride: int
    o_off: int
    o_stride: int
    s_off: int
    s_stride: int
    srow: int
    scol: int
    rows: int
    cols: int


class WireWork(NamedTuple):
    """Wire-source blocks by what produces them: BF16 parameters copied from the BF16 shards (`plain`,
    src offsets there), scale rows copied from the scale buffer (`scales`), FP8 weights quantised
    (`rects`); destinations as given."""

    plain: list[Block]
    scales: list[Block]
    rects: list[QuantRect]


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

    def scale_pos(self, block_row: int, col: int) -> int:
        """Float offset in the scale buffer of scale (split-dim block row, other-dim block)."""
        if self.transposed:
            return self.scale_off + col * self.scale_shape[1] + block_row
        return self.scale_off + block_row * self.scale_shape[1] + col


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


@dataclass(frozen=True)
class Fp8Layout:
    """One source rank's quantiser descriptors (module docstring). `scale_at`: scale param -> byte
    offset in the scale buffer (`scale_bytes` long); `index`: the int32 scale-index tables."""

    train: Storage
    wire: Storage
    scale_at: dict[int, int]
    scale_bytes: int
    weights: tuple[Weight, ...]
    index: tuple[int, ...]
    vector_len: int

    @staticmethod
    def of(plan: Plan, rank: int) -> "Fp8Layout":
        local = plan.world.source.local(rank)
        layout = plan.world.source.layout
        train, wire = rank_storage(plan.inventory, layout, local), wire_storage(plan, layout, local)
        offsets, vector_len = gather_layout(plan)
        weight_of = scale_weights(plan)
        scale_of = {wi: si for si, wi in weight_of.items()}
        scale_at: dict[int, int] = {}
        nbytes = 0
        for slot in wire.slots:
            if slot.param in weight_of:
                scale_at[slot.param] = nbytes
                nbytes += -(-slot.nbytes // ALIGN) * ALIGN
        index: list[int] = []
        weights = tuple(_weight(plan, slot, wire, scale_of[slot.param], scale_at, offsets, index)
                        for slot in train.slots if slot.param in scale_of)
        return Fp8Layout(train, wire, scale_at, nbytes, weights, tuple(index), vector_len)

    def gather_maps(self) -> tuple[list[int], list[int]]:
        """(scale-buffer float, vector entry) pairs of the cut blocks' maxima, as two lists."""
        src: list[int] = []
        dst: list[int] = []
        for w in self.weights:
            for pc in w.pieces:
                for k, off in pc.gathered:
                    for c in range(w.other_blocks):
                        src.append(w.scale_pos(pc.scale_local + k, c))
                        dst.append(off + c)
        return src, dst

    def amax_rects(self) -> list[AmaxRect]:
        """Every block piece of every weight, in memory order of the BF16 shard (the scale pass)."""
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
                        pos = w.scale_pos(pc.scale_local + b - b0, c)
                        if w.transposed:
                            out.append(AmaxRect(base + c * FP8_BLOCK * cols + first, cols, n, hi - lo, pos))
                        else:
                            out.append(AmaxRect(base + first * cols + c * FP8_BLOCK, cols, hi - lo, n, pos))
        return out

    def locate(self, b: Block) -> Slot:
        """The wire slot block `b` reads from (a block never spans two)."""
        i = bisect.bisect_right([s.offset for s in self.wire.slots], b.src) - 1
        slot = self.wire.slots[max(i, 0)]
        last = b.src + (b.rows - 1) * b.src_stride + b.row_bytes
        if i < 0 or last > slot.offset + slot.nbytes:
            raise AssertionError(f"block {b} is not inside one wire slot")
        return slot

    def split(self, blocks: list[Block]) -> WireWork:
        """`blocks` (src: wire offsets) by what produces them (`WireWork`)."""
        weights = {w.param: w for w in self.weights}
        work = WireWork([], [], [])
        for b in blocks:
            slot = self.locate(b)
            delta = b.src - slot.offset
            if slot.param in weights:
                work.rects.append(_rect(weights[slot.param], b, delta))
            elif slot.param in self.scale_at:
                work.scales.append(b._replace(src=self.scale_at[slot.param] + delta))
            else:
                work.plain.append(b._replace(src=self.train.by_param[slot.param].offset + delta))
        return work

    def image_blocks(self, storage: Storage) -> list[Block]:
        """Blocks that write every slot of `storage` (a send image laid out its own way) whole."""
        out = []
        for s in storage.slots:
            w = self.wire.by_param[s.param]
            row = s.nbytes // s.shape[0] if len(s.shape) == 2 else s.nbytes
            rows = s.shape[0] if len(s.shape) == 2 else 1
            out.append(Block(w.offset, row, s.offset, row, rows, row))
        return out


def _weight(plan: Plan, slot: Slot, wire: Storage, si: int, scale_at: dict[int, int],
            offsets: dict[tuple[int, int], int], index: list[int]) -> Weight:
    p = plan.inventory.params[slot.param]
    transposed = p.split_dim == 1
    pieces = _pieces(slot, si, offsets)
    sslot = wire.by_param[si]
    rows, cols = slot.shape
    split = _split_index(pieces, cols if transposed else rows)
    whole = [i // FP8_BLOCK for i in range(rows if transposed else cols)]
    at = (len(index), len(index) + rows)
    index += (whole + split) if transposed else (split + whole)
    other = -(-p.shape[0 if transposed else 1] // FP8_BLOCK)
    return Weight(slot.param, si, transposed, slot, wire.by_param[slot.param], scale_at[si] // 4,
                  (sslot.shape[0], sslot.shape[1]), at, pieces, other)


def _rect(w: Weight, b: Block, delta: int) -> QuantRect:
    """The FP8 bytes of block `b` (at `delta` bytes into the weight's wire slot) as a rectangle."""
    cols = w.wire.shape[1]
    i0, j0 = divmod(delta, cols)
    if (b.rows > 1 and b.src_stride != cols) or j0 + b.row_bytes > cols:
        raise AssertionError(f"block {b} of an FP8 weight is not a rectangle of its rows")
    base = w.train.offset // w.train.itemsize
    return QuantRect(base + i0 * cols + j0, cols, b.dst, b.dst_stride, w.scale_off, w.scale_shape[1],
                     w.index[0] + i0, w.index[1] + j0, b.rows, b.row_bytes)
