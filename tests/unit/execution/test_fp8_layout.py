"""The FP8 quantiser's descriptors, pure (issue 22): for every source rank of FP8 plans with
SwiGLU halves, row-parallel weights, experts and blocks cut by a source TP boundary, the work a
set of wire blocks splits into covers each wire byte exactly once, reads inside the BF16 shard,
looks scales up inside the scale tensor, and marks exactly the plan's cut blocks for the all-reduce;
staging chunks of any size split the same way."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SMALL_FLAGS
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.execution.fp8_layout import Fp8Layout
from refit_core.planning.blocks import rank_blocks
from refit_core.planning.wire import rank_storages
from refit_core.planning.precision import FP8_BLOCK

CUT = {"first_dense_layers": 2, "ffn_hidden_size": 2688}  # 10.5 blocks per source TP rank: cut blocks


def _plan(name: str, **extra: object):
    return apply_overrides(resolve(name), {**SMALL_FLAGS, "rl_inference_precision": "fp8", "refit_method": "gloo",
                                           **extra}).plan()


PLANS = {"config-4": _plan("config-4"), "collocated-4": _plan("collocated-4"), "config-4-cut": _plan("config-4", **CUT)}


def _once(spans: list[tuple[int, int]]) -> int:
    """Total length of [start, stop) spans, checking that none overlaps another."""
    spans.sort()
    for (_, a1), (b0, _) in zip(spans, spans[1:]):
        assert a1 <= b0, "a byte produced twice"
    return sum(b - a for a, b in spans)


def _rows(off: int, stride: int, rows: int, width: int) -> list[tuple[int, int]]:
    return [(off + i * stride, off + i * stride + width) for i in range(rows)]


def _covered(lay: Fp8Layout, blocks) -> list[tuple[int, int]]:
    """The wire byte spans `blocks` read; each FP8 block becomes one rectangle of its own shape."""
    work = lay.split(blocks)
    weights = {w.param: w for w in lay.weights}
    rects = iter(work.rects)
    spans = []
    for b in blocks:
        spans += _rows(b.src, b.src_stride, b.rows, b.row_bytes)
        if lay.locate(b).param in weights:
            q = next(rects)
            assert (q.rows, q.cols, q.o_off, q.o_stride) == (b.rows, b.row_bytes, b.dst, b.dst_stride)
    assert len(work.rects) + len(work.plain) + len(work.scales) == len(blocks)
    return spans


@pytest.mark.parametrize("name", sorted(PLANS))
def test_the_whole_wire_source_splits_into_each_byte_once(name: str) -> None:
    plan = PLANS[name]
    for r in plan.world.source.ranks:
        lay = Fp8Layout.of(plan, r)
        assert _once(_covered(lay, lay.image_blocks(lay.wire))) == sum(s.nbytes for s in lay.wire.slots)
        work = lay.split(lay.image_blocks(lay.wire))
        for q in work.rects:
            w = next(w for w in lay.weights if w.wire.offset <= q.o_off < w.wire.offset + w.wire.nbytes)
            first = w.train.offset // w.train.itemsize
            assert first <= q.x_off and q.x_off + (q.rows - 1) * q.x_stride + q.cols <= first + w.train.nbytes // 2
            rows = lay.index[q.srow: q.srow + q.rows]
            cols = lay.index[q.scol: q.scol + q.cols]
            assert max(rows) < w.scale_shape[0] and max(cols) < w.scale_shape[1]  # inside the scale tensor


@pytest.mark.parametrize("name", sorted(PLANS))
def test_block_pieces_cover_each_shard_once_and_cut_blocks_are_the_plans(name: str) -> None:
    plan = PLANS[name]
    cut = {(g.param, b) for g in plan.gathers for b in range(g.start, g.start + g.length)}
    marked = set()
    for r in plan.world.source.ranks:
        lay = Fp8Layout.of(plan, r)
        spans = []
        for a in lay.amax_rects():
            assert 0 < a.rows <= FP8_BLOCK and 0 < a.cols <= FP8_BLOCK
            spans += _rows(a.x_off, a.x_stride, a.rows, a.cols)
        assert _once(spans) == sum(w.train.nbytes // 2 for w in lay.weights)
        for w in lay.weights:
            for pc in w.pieces:
                marked |= {(w.scale, pc.row0 // FP8_BLOCK + k) for k, _ in pc.gathered}
        src, dst = lay.gather_maps()
        assert len(src) == len(dst) and all(0 <= d < lay.vector_len for d in dst)
    assert marked == cut and (bool(cut) == name.endswith("cut"))


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(min_value=256, max_value=1 << 20))
def test_staging_chunks_of_any_size_split_into_each_byte_once(chunk: int) -> None:
    """Buckets cut rows of a weight anywhere: each chunk's blocks still split, byte for byte."""
    plan = PLANS["config-4-cut"]
    for r in plan.world.source.ranks:
        src, dst = rank_storages(plan, r)
        rb = rank_blocks(plan, plan.for_rank(r), src, dst, chunk, None)
        lay = Fp8Layout.of(plan, r)
        spans = _covered(lay, list(rb.local))
        for rnd in rb.sends:
            for c in rnd:
                spans += _covered(lay, list(c.blocks))
        assert _once(spans) == sum(plan.nbytes(t) for t in plan.transfers if t.src == r)
