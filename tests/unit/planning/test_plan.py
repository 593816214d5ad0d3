"""The transfer plan: exact coverage over random layouts, conservation, determinism, balance."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings

from orchestrator.configs import builtin_configs, resolve
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout
from refit_core.planning.model import ModelSpec, inventory
from refit_core.planning.plan import plan_transfers
from refit_core.planning.validate import CoverageError, check_plan

from helpers import layout_pairs

SEED = [n for n in builtin_configs() if n.startswith(("config-", "collocated-"))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_pairs())
def test_every_destination_element_exactly_once(case) -> None:
    model, src, dst, mode = case
    inv = inventory(model, (src.tp, dst.tp))
    world = world_layout(mode, src, dst)
    plan = plan_transfers(inv, world)
    check_plan(plan)
    per = plan.per_rank
    assert sum(v.bytes_out for v in per.values()) == sum(v.bytes_in for v in per.values())
    # every destination byte once: the destination shards' total size
    from refit_core.planning.storage import rank_storage

    want = 0
    for r in world.destination.ranks:
        st_ = rank_storage(inv, dst, r - world.destination.first_rank)
        want += sum(s.nbytes for s in st_.slots)
    assert plan.delivered_bytes == want
    if mode is RefitMode.NON_COLLOCATED:
        assert plan.local_bytes == 0
    assert plan_transfers(inv, world).transfers == plan.transfers  # deterministic


@pytest.mark.parametrize("name", SEED)
def test_seed_plans_cover_and_balance_within_ten_percent(name: str) -> None:
    cfg = resolve(name)
    plan = plan_transfers(cfg.inventory(), cfg.world())
    check_plan(plan)
    assert plan.max_source_bytes <= 1.10 * plan.balance_bound
    # the bound is the ideal: no source could send less than total/sources
    n_src = len(cfg.world().source.ranks)
    assert plan.balance_bound >= plan.network_bytes / n_src - 1


def test_collocated_slices_already_held_are_local_copies() -> None:
    cfg = resolve("collocated-3")  # TP=4,EP=2 -> TP=4,EP=1 on the same ranks
    plan = plan_transfers(cfg.inventory(), cfg.world())
    # destination rank 0 (tp 0) already holds the tp-0 dense slices as source rank 0
    assert plan.per_rank[0].bytes_local > 0
    for t in plan.transfers:
        if t.src == t.dst:
            assert t.src in cfg.world().destination.ranks


def test_adjacent_slices_coalesce() -> None:
    # TP 4 -> TP 2, no replicas: each destination slice comes from exactly two sources in two pieces
    cfg = resolve("config-3")
    plan = plan_transfers(cfg.inventory(), cfg.world())
    keys = [(t.src, t.dst, t.param) for t in plan.transfers]
    assert len(keys) == len(set(keys))


def test_checker_catches_a_missing_and_a_duplicated_slice() -> None:
    cfg = resolve("config-4")
    plan = plan_transfers(cfg.inventory(), cfg.world())
    short = dataclasses.replace(plan, transfers=plan.transfers[1:])
    with pytest.raises(CoverageError, match="needs"):
        check_plan(short)
    dup = dataclasses.replace(plan, transfers=plan.transfers + plan.transfers[:1])
    with pytest.raises(CoverageError):
        check_plan(dup)
    t = plan.transfers[0]
    wrong_src = dataclasses.replace(plan, transfers=(t._replace(src_offset=t.src_offset + 1),) + plan.transfers[1:])
    with pytest.raises(CoverageError, match="does not hold"):
        check_plan(wrong_src)


def test_swiglu_fc1_each_tp_rank_holds_part_of_gate_and_up() -> None:
    from refit_core.planning.sharding import rank_pieces

    model = ModelSpec(num_layers=1, hidden_size=8, num_attention_heads=2, ffn_hidden_size=8, swiglu=True)
    inv = inventory(model, (2,))
    fc1 = next(p for p in inv.params if p.name.endswith("mlp.linear_fc1.weight"))
    assert fc1.shape == (16, 8)
    pieces = rank_pieces(fc1, ParallelLayout(tp=2), 1, 1, None)
    assert [(pc.start, pc.length, pc.local_start) for pc in pieces] == [(4, 4, 0), (12, 4, 4)]


def test_megatron_names_and_shapes_of_the_seed_model() -> None:
    inv = resolve("config-1").inventory()
    shapes = {p.name: p.shape for p in inv.params}
    assert shapes["decoder.layers.0.self_attention.linear_qkv.weight"] == (3 * 1024, 1024)
    assert shapes["decoder.layers.0.self_attention.linear_proj.weight"] == (1024, 1024)
    assert shapes["decoder.layers.3.mlp.experts.local_experts.15.linear_fc1.weight"] == (2688, 1024)
    assert shapes["decoder.layers.3.mlp.experts.local_experts.15.linear_fc2.weight"] == (1024, 2688)
    assert shapes["decoder.layers.0.mlp.shared_experts.linear_fc1.weight"] == (512, 1024)
    assert shapes["decoder.layers.0.mlp.router.weight"] == (16, 1024)
    assert shapes["embedding.word_embeddings.weight"] == (32000, 1024)
    assert "output_layer.weight" not in shapes  # tied, as Megatron's default
    assert all(p.dtype == "bfloat16" for p in inv.params)
