"""Node-aware plans: nearest replica first, each link class balanced on its own (issue 17, part 2)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.configs import resolve
from refit_core.planning.layout import world_layout
from refit_core.planning.model import inventory
from refit_core.planning.nodes import INTER, INTRA, NodeMap
from refit_core.planning.plan import Plan, plan_transfers
from refit_core.planning.sharding import shard_groups
from refit_core.planning.timemodel import predict
from refit_core.planning.validate import check_plan
from test_plan import layout_pairs


def cross_node_bytes(plan: Plan, nodes: NodeMap) -> int:
    return sum(b for (s, d), b in plan.pair_bytes.items() if nodes.link(s, d) == INTER)


def nic_out(plan: Plan, nodes: NodeMap) -> dict[int, int]:
    out = {r: 0 for r in plan.world.source.ranks}
    for (s, d), b in plan.pair_bytes.items():
        if nodes.link(s, d) == INTER:
            out[s] += b
    return out


def test_nearest_holders_prefers_the_destination_node() -> None:
    nodes = NodeMap(4)
    assert nodes.nearest_holders((1, 5, 6), 7) == (INTRA, (5, 6))
    assert nodes.nearest_holders((1, 2), 7) == (INTER, (1, 2))
    assert (nodes.link(3, 3), nodes.link(3, 0), nodes.link(3, 4)) == ("local", INTRA, INTER)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_pairs(), st.sampled_from([1, 2, 3, 4, 8]))
def test_node_aware_plans_cover_once_cross_nodes_less_and_balance_each_nic(case, per_node: int) -> None:
    model, src, dst, mode = case
    inv = inventory(model, (src.tp, dst.tp))
    world = world_layout(mode, src, dst)
    nodes = NodeMap(per_node)
    blind = plan_transfers(inv, world)
    aware = plan_transfers(inv, world, nodes)
    check_plan(aware)  # every destination element exactly once, from a rank that holds it
    assert aware.delivered_bytes == blind.delivered_bytes and aware.local_bytes == blind.local_bytes
    # nearest replica first: no byte crosses nodes that a same-node holder could have sent
    assert cross_node_bytes(aware, nodes) <= cross_node_bytes(blind, nodes)
    # each link class within a stated margin of its max-flow optimum: a cut between senders falls
    # on whole rows, so a source's load exceeds its share by less than 2 rows per holder set
    unit = max(p.index_bytes for p in inv.params)
    holder_sets = {g.holders for p in inv.params
                   for g in shard_groups(p, src, model.num_layers, model.num_experts)}
    groups = len(holder_sets) * (nodes.node(world.world_size - 1) + 1)  # holder set x destination node
    for cls, (most, best) in aware.class_balance.items():
        assert best <= most <= best + 2 * unit * groups, cls
    # the NIC optimum of the node-aware plan bounds every plan's busiest NIC, the node-blind one's too
    bound = dict(aware.class_bounds).get(INTER, 0)
    assert bound <= max(nic_out(blind, nodes).values(), default=0)
    assert plan_transfers(inv, world, nodes).transfers == aware.transfers  # deterministic


def test_one_node_plans_are_the_node_blind_plans() -> None:
    """The seed's 8-GPU configs share one node: node-aware changes nothing there."""
    for name in ("config-1", "config-4", "collocated-1", "collocated-3"):
        cfg = resolve(name)
        inv, world = cfg.inventory(), cfg.world()
        assert cfg.plan(inv, world).transfers == plan_transfers(inv, world).transfers


def test_kimi_k2_collocated_node_aware_bound() -> None:
    """docs/kimi-k2.md: the node-aware plan takes kimi-k2-collocated's bound from 0.530 s to 0.317 s."""
    cfg = resolve("kimi-k2-collocated")
    inv, world = cfg.inventory(), cfg.world()
    blind = predict(plan_transfers(inv, world), cfg.link_model())
    plan = cfg.plan(inv, world)
    aware = predict(plan, cfg.link_model())
    assert blind.bound_s == pytest.approx(0.530, abs=5e-4)
    assert aware.bound_s == pytest.approx(0.317, abs=5e-4)
    assert aware.bottleneck_link == "inter-node out"
    assert aware.class_bounds_s()[INTER] == pytest.approx(aware.bound_s)
    assert plan.balance <= 1.0001  # each class at its max-flow optimum
    # 15.85 GB per GPU must cross nodes: experts whose holders all sit on other nodes
    assert max(nic_out(plan, NodeMap(8)).values()) == pytest.approx(15.85e9, rel=1e-3)
