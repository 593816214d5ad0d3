"""NVSHMEM placement: what goes in the symmetric heap, what is private, and that the one-sided
copies it implies deliver every destination byte (run on CPU tensors, one buffer per heap)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.configs import resolve
from refit_core.execution import weights
from refit_core.planning.blocks import one_sided_blocks
from refit_core.errors import ConfigError
from refit_core.planning.layout import RefitMode, world_layout
from refit_core.planning.memory import NVSHMEM_OVERHEAD_BYTES
from refit_core.planning.model import inventory
from refit_core.planning.placement import Placement, layout_heap, place
from refit_core.planning.plan import plan_transfers
from refit_core.planning.storage import ALIGN, Slot, Storage, rank_storage
from refit_core.execution.transports.copy import copy_blocks_torch
from helpers import layout_pairs

MIB = 1 << 20


def storages_of(inv, world):
    out = []
    for r in range(world.gpus_used):
        s, d = world.source.local(r), world.destination.local(r)
        out.append((rank_storage(inv, world.source.layout, s) if s is not None else None,
                    rank_storage(inv, world.destination.layout, d) if d is not None else None))
    return out


def _storage(sizes: list[int]) -> Storage:
    slots, off = [], 0
    for i, n in enumerate(sizes):
        slots.append(Slot(i, off, (n,), (), 1))
        off += -(-n // ALIGN) * ALIGN
    return Storage(tuple(slots), off)


@st.composite
def rank_shards(draw):
    """Random (source, destination) slot sizes on 1..8 ranks; a rank may lack either role."""
    size = st.integers(1, 5000)
    n = draw(st.integers(1, 8))
    out = []
    for _ in range(n):
        roles = draw(st.sampled_from(["src", "dst", "both"]))
        s = _storage(draw(st.lists(size, min_size=1, max_size=6))) if roles != "dst" else None
        d = _storage(draw(st.lists(size, min_size=1, max_size=6))) if roles != "src" else None
        out.append((s, d))
    return out


def _check(p: Placement, storages) -> None:
    for r, (s, d) in enumerate(storages):
        rp = p.ranks[r]
        for role, st_, parts in (("source", s, rp.source), ("destination", d, rp.destination)):
            held = sorted(x.param for part in parts for x in part.storage.slots)
            assert held == sorted(x.param for x in (st_.slots if st_ else ()))  # every slot once
            for part in parts:
                end = part.start + part.storage.nbytes
                assert end <= (p.heap_bytes if part.in_heap else rp.private_bytes)
                assert all(x.offset % ALIGN == 0 for x in part.storage.slots)
            reached = {"push": "destination", "pull": "source"}.get(p.direction)
            if role == reached or p.direction == "all":
                assert all(part.in_heap and part.start == 0 or p.direction == "all" and part.in_heap for part in parts)
        # heap parts of one rank never overlap
        spans = sorted((part.start, part.start + part.storage.nbytes) for part in rp.source + rp.destination
                       if part.in_heap)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert rp.heap_used <= p.heap_bytes


@settings(max_examples=300, deadline=None)
@given(rank_shards(), st.sampled_from(["push", "pull", "all"]))
def test_every_slot_placed_once_within_its_buffer(storages, direction: str) -> None:
    p = place(storages, direction)
    assert p.direction == direction
    _check(p, storages)


@settings(max_examples=300, deadline=None)
@given(rank_shards())
def test_unused_heap_is_below_the_smallest_tensor_that_did_not_fit(storages) -> None:
    p = place(storages)
    push, pull = place(storages, "push"), place(storages, "pull")
    assert p.max_unused_heap == min(push.max_unused_heap, pull.max_unused_heap)
    for r, rp in enumerate(p.ranks):
        spilled = [x.nbytes for part in rp.source + rp.destination if not part.in_heap for x in part.storage.slots]
        if spilled:  # first fit: the room left is smaller than every tensor it turned away
            assert p.unused_heap(r) < -(-min(spilled) // ALIGN) * ALIGN


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_pairs(), st.sampled_from(["push", "pull", "all"]))
def test_one_sided_copies_deliver_every_destination_byte(case, direction: str) -> None:
    model, src, dst, mode = case
    inv = inventory(model, (src.tp, dst.tp))
    world = world_layout(mode, src, dst)
    plan = plan_transfers(inv, world)
    storages = storages_of(inv, world)
    p = place(storages, direction)
    heap = [torch.full((p.heap_bytes,), 0xFF, dtype=torch.uint8) for _ in storages]
    private = [torch.full((max(rp.private_bytes, 1),), 0xFF, dtype=torch.uint8) for rp in p.ranks]

    def buf(where):
        return heap[where.rank] if where.in_heap else private[where.rank]

    for r, rp in enumerate(p.ranks):
        for part in rp.source:
            weights.fill(buf_view(heap[r] if part.in_heap else private[r], part), part.storage, inv)
    for r in range(len(storages)):
        for s, d, b in one_sided_blocks(plan, plan.for_rank(r), p, storages):
            if d.rank != r:
                assert d.in_heap and direction != "pull"  # peers are reached only in their heap
            if s.rank != r:
                assert s.in_heap and direction == "pull"
            copy_blocks_torch([b], buf(s), buf(d))
    for r, rp in enumerate(p.ranks):
        for part in rp.destination:
            weights.verify(buf_view(heap[r] if part.in_heap else private[r], part), part.storage, inv, r)


def buf_view(t: torch.Tensor, part) -> torch.Tensor:
    return t[part.start: part.start + part.storage.nbytes]


def test_seed_config_1_reads_from_sources_and_wastes_no_heap() -> None:
    """4 sources of 407 MB, 2 destinations of 760 MB: sources' shards are the heap, destinations
    put 407 MB of theirs there too and 353 MB in private memory."""
    cfg = resolve("config-1")
    inv, world = cfg.inventory(), cfg.world()
    p = place(storages_of(inv, world))
    assert p.direction == "pull"
    assert p.heap_bytes == max(s.nbytes for s, _ in storages_of(inv, world) if s)
    assert p.max_unused_heap < 1 * MIB
    assert [round(r.private_bytes / 1e6) for r in p.ranks] == [0, 0, 0, 0, 353, 353]
    fit = cfg.memory_fit(inv, world)
    assert [m.buffer_bytes for m in fit.per_rank[:6]] == [p.unused_heap(r) + NVSHMEM_OVERHEAD_BYTES for r in range(6)]
    assert [m.buffer_bytes for m in fit.per_rank[6:]] == [0, 0]  # idle GPUs


@pytest.mark.parametrize("name", ["config-2", "config-5"])
def test_balanced_configs_push_into_a_heap_of_exactly_the_destination_shards(name: str) -> None:
    cfg = resolve(name)
    storages = storages_of(cfg.inventory(), cfg.world())
    p = place(storages)
    assert p.direction == "push" and p.max_unused_heap == 0
    assert p.heap_bytes == max(d.nbytes for _, d in storages if d)


def test_every_seed_config_and_the_large_model_stay_within_one_tensor_of_their_shards() -> None:
    for name in ["config-1", "config-3", "config-4", "config-6", "collocated-1", "collocated-3"]:
        cfg = resolve(name)
        p = place(storages_of(cfg.inventory(), cfg.world()))
        assert p.max_unused_heap < 4 * MIB, name


def test_across_nodes_auto_keeps_everything_in_the_heap() -> None:
    cfg = resolve("config-1").with_changes(gpus_per_node=2)
    fit = cfg.memory_fit()
    sizes_all = layout_heap([([1000], None), (None, [3000])], "all")
    assert sizes_all.heap_bytes == 3072 and sizes_all.direction == "all"
    # every GPU carries the largest source + destination, as before the placement existed
    assert max(m.buffer_bytes for m in fit.per_rank) > 300 * MIB + NVSHMEM_OVERHEAD_BYTES


def test_unknown_direction_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="use one of auto, push, pull, all"):
        layout_heap([([256], [256])], "sideways")


def test_collocated_ranks_hold_both_roles() -> None:
    cfg = resolve("collocated-2")
    inv, world = cfg.inventory(), cfg.world()
    assert world.mode is RefitMode.COLLOCATED
    p = place(storages_of(inv, world))
    for rp in p.ranks:
        assert rp.source and rp.destination
