"""Relayed plans (issue 26): shared cross-node slices enter each node once and fan out over NVLink."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.configs import resolve
from refit_core.planning.layout import world_layout
from refit_core.planning.model import inventory
from refit_core.planning.nodes import INTER, INTRA, NodeMap
from refit_core.planning.plan import plan_choices, plan_transfers
from refit_core.planning.planfile import plan_from_bytes, plan_to_bytes
from refit_core.planning.relay import Atom, relay
from refit_core.planning.timemodel import predict
from refit_core.planning.validate import CoverageError, check_plan
from test_nodes import cross_node_bytes
from test_plan import layout_pairs


def test_a_shared_slice_is_split_evenly_among_the_node_and_forwarded() -> None:
    # 8 rows of 10 bytes that ranks 4-7 (node 1 of 4 GPUs) all need, held by ranks 0 and 1 (node 0)
    atoms = [Atom(d, 0, 0, 8, 0, 0) for d in (4, 5, 6, 7)]
    groups, forwards = relay({(INTER, (0, 1)): atoms}, NodeMap(4), [10])
    assert groups == {(INTER, (0, 1)): [Atom(4, 0, 0, 2, 0, 0), Atom(5, 0, 2, 2, 2, 2), Atom(6, 0, 4, 2, 4, 4),
                                        Atom(7, 0, 6, 2, 6, 6)]}
    assert len(forwards) == 12 and {(f.relay, f.start) for f in forwards} == {(4, 0), (5, 2), (6, 4), (7, 6)}
    assert all(f.length == 2 and f.relay != f.dst and f.relay // 4 == f.dst // 4 for f in forwards)
    # a slice one destination of its node needs, or needed on other nodes, or cut differently, is not relayed
    lone = [Atom(4, 0, 0, 8, 0, 0), Atom(8, 0, 0, 8, 0, 0), Atom(5, 0, 0, 4, 0, 0), Atom(6, 0, 4, 4, 4, 0)]
    assert relay({(INTER, (0, 1)): lone}, NodeMap(4), [10]) == ({(INTER, (0, 1)): lone}, [])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_pairs(), st.sampled_from([1, 2, 3, 4, 8]))
def test_relayed_plans_cover_once_forward_within_a_node_and_cross_less(case, per_node: int) -> None:
    model, src, dst, mode = case
    inv = inventory(model, (src.tp, dst.tp))
    world = world_layout(mode, src, dst)
    nodes = NodeMap(per_node)
    direct, relayed = plan_choices(inv, world, nodes)
    assert direct.transfers == plan_transfers(inv, world, nodes).transfers  # relays change nothing unasked
    check_plan(relayed)  # every destination element exactly once; every relay forwards what it received at hop 0
    assert relayed.delivered_bytes == direct.delivered_bytes and relayed.local_bytes == direct.local_bytes
    hop1 = [t for t in relayed.transfers if t.hop]
    assert all(t.hop == 1 and nodes.link(t.src, t.dst) == INTRA and t.src in world.destination.ranks for t in hop1)
    # every relayed byte is one a direct plan moves across nodes: the NICs carry exactly that much less
    assert cross_node_bytes(relayed, nodes) == cross_node_bytes(direct, nodes) - relayed.relayed_bytes
    if world.world_size <= per_node:
        assert relayed.transfers == direct.transfers
    assert plan_from_bytes(plan_to_bytes(relayed)).transfers == relayed.transfers  # the plan file carries hops


def test_coverage_refuses_a_relay_that_forwards_what_it_did_not_receive() -> None:
    cfg = resolve("kimi-k2-small")
    _, relayed = plan_choices(cfg.inventory(), cfg.world(), cfg.node_map())
    hop = next(t for t in relayed.transfers if t.hop)
    other = next(r for r in cfg.world().destination.ranks if r not in (hop.src, hop.dst))
    bad = tuple(t._replace(src=other) if t == hop else t for t in relayed.transfers)
    with pytest.raises(CoverageError, match=f"relay {other} forwards .* that it does not receive at hop 0"):
        check_plan(dataclasses.replace(relayed, transfers=bad))
    source = tuple(t._replace(src=0) if t == hop else t for t in relayed.transfers)
    with pytest.raises(CoverageError, match="rank 0 relays but is not a destination rank"):
        check_plan(dataclasses.replace(relayed, transfers=source))


@pytest.mark.parametrize("name", ["config-1", "collocated-1", "kimi-k2-small"])
def test_relay_off_and_one_node_plans_are_unchanged(name: str) -> None:
    cfg = resolve(name)
    inv, world = cfg.inventory(), cfg.world()
    unchanged = plan_transfers(inv, world, cfg.node_map(), cfg.run.inference_precision)
    assert cfg.with_changes(relay="off").plan(inv, world).transfers == unchanged.transfers
    if world.world_size <= cfg.hardware.gpus_per_node:
        assert cfg.plan(inv, world).transfers == unchanged.transfers
    # a method that cannot forward gets no relays
    assert cfg.with_changes(method="nvshmem").relay_choice(inv, world).relayed is None


def test_kimi_k2_record_relayed_at_its_nic_bound() -> None:
    """docs/kimi-k2.md: relays take kimi-k2-record from 0.443 s to 0.222 s predicted (NIC 0.194 s + NVLink 0.028 s)."""
    cfg = resolve("kimi-k2-record")
    choice = cfg.relay_choice()
    assert choice.uses_relays and choice.direct.time_s == pytest.approx(0.4434, abs=5e-4)
    got = choice.relayed
    assert got is not None and got.time_s <= 0.25 and got.bottleneck_link == "inter-node in"
    assert got.class_bounds_s()[INTER] == pytest.approx(0.1942, abs=5e-4)
    assert got.class_bounds_s()[INTRA] == pytest.approx(0.0277, abs=5e-4)
    # each destination NIC takes an even share of its node's shared bytes
    nic_in = [g.inter_in for g in got.loads if g.rank in cfg.world().destination.ranks]
    assert max(nic_in) / min(nic_in) < 1.001
    assert predict(choice.plan, cfg.link_model()).time_s == pytest.approx(got.time_s)
