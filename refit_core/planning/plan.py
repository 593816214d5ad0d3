"""The transfer plan: which source rank sends which slice of which parameter to which destination.

Every element of every destination shard is delivered exactly once. A slice a destination rank
already holds as a source (collocated mode) becomes a local copy. A slice held by several source
replicas is served by them in shares chosen to minimise the largest per-source byte count: the
shares come from a max-flow over (replica set -> source rank) edges, which also yields the best
possible balance (the fractional optimum), the bound the plan's balance figure is measured against.
The plan is a pure function of (inventory, world layout): no process group, no GPU.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from refit_core.planning.balance import min_max_shares
from refit_core.planning.layout import RefitMode, WorldLayout
from refit_core.planning.model import Inventory
from refit_core.planning.sharding import Piece, ShardGroup, shard_groups


class Transfer(NamedTuple):
    """Global indices [start, start+length) of `param`'s split dimension, from `src` to `dst`.

    `src_offset`/`dst_offset` are the same range's positions in the source's and destination's
    local tensors. `src == dst` marks a local copy.
    """

    param: int
    src: int
    dst: int
    start: int
    length: int
    src_offset: int
    dst_offset: int


@dataclass(frozen=True)
class RankTraffic:
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_local: int = 0


@dataclass(frozen=True)
class Plan:
    world: WorldLayout
    inventory: Inventory
    transfers: tuple[Transfer, ...]
    balance_bound: int
    """Best possible largest per-source network byte count (fractional optimum over replicas)."""

    @cached_property
    def _unit(self) -> list[int]:
        return [p.index_bytes for p in self.inventory.params]

    def nbytes(self, t: Transfer) -> int:
        return t.length * self._unit[t.param]

    @cached_property
    def per_rank(self) -> dict[int, RankTraffic]:
        acc: dict[int, list[int]] = {r: [0, 0, 0] for r in range(self.world.world_size)}
        for t in self.transfers:
            b = self.nbytes(t)
            if t.src == t.dst:
                acc[t.dst][2] += b
            else:
                acc[t.src][1] += b
                acc[t.dst][0] += b
        return {r: RankTraffic(*v) for r, v in acc.items()}

    @cached_property
    def pair_bytes(self) -> dict[tuple[int, int], int]:
        acc: dict[tuple[int, int], int] = defaultdict(int)
        for t in self.transfers:
            acc[(t.src, t.dst)] += self.nbytes(t)
        return dict(sorted(acc.items()))

    @property
    def network_bytes(self) -> int:
        return sum(v.bytes_in for v in self.per_rank.values())

    @property
    def local_bytes(self) -> int:
        return sum(v.bytes_local for v in self.per_rank.values())

    @property
    def delivered_bytes(self) -> int:
        """Every destination byte once: network plus local copies."""
        return self.network_bytes + self.local_bytes

    @property
    def max_source_bytes(self) -> int:
        return max((self.per_rank[r].bytes_out for r in self.world.source.ranks), default=0)

    @property
    def balance(self) -> float:
        """Largest per-source byte count over the best possible (1.0 = perfectly balanced)."""
        return self.max_source_bytes / self.balance_bound if self.balance_bound else 1.0

    def for_rank(self, rank: int) -> "RankPlan":
        sends: dict[int, list[Transfer]] = defaultdict(list)
        recvs: dict[int, list[Transfer]] = defaultdict(list)
        local: list[Transfer] = []
        for t in self.transfers:
            if t.src == rank and t.dst == rank:
                local.append(t)
            elif t.src == rank:
                sends[t.dst].append(t)
            elif t.dst == rank:
                recvs[t.src].append(t)
        return RankPlan(rank, dict(sorted(sends.items())), dict(sorted(recvs.items())), tuple(local))


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of a plan: what it sends to each peer, receives from each, copies locally."""

    rank: int
    sends: dict[int, list[Transfer]] = field(default_factory=dict)
    recvs: dict[int, list[Transfer]] = field(default_factory=dict)
    local: tuple[Transfer, ...] = ()


class _Atom(NamedTuple):
    dst: int
    param: int
    start: int
    length: int
    src_offset: int
    dst_offset: int


def _intersect(a: Piece, b: Piece) -> tuple[int, int] | None:
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return (lo, hi - lo) if hi > lo else None


def plan_transfers(inv: Inventory, world: WorldLayout) -> Plan:
    """Compute the exact, balanced transfer plan of `inv` from world.source to world.destination."""
    spec = inv.spec
    src_l, dst_l = world.source.layout, world.destination.layout
    src0, dst0 = world.source.first_rank, world.destination.first_rank
    collocated = world.mode is RefitMode.COLLOCATED
    local: list[Transfer] = []
    groups: dict[tuple[int, ...], list[_Atom]] = defaultdict(list)

    for pi, p in enumerate(inv.params):
        sgs = [ShardGroup(g.pieces, tuple(src0 + h for h in g.holders))
               for g in shard_groups(p, src_l, spec.num_layers, spec.num_experts)]
        for dg in shard_groups(p, dst_l, spec.num_layers, spec.num_experts):
            for dpiece in dg.pieces:
                for sg in sgs:
                    for spiece in sg.pieces:
                        cut = _intersect(dpiece, spiece)
                        if cut is None:
                            continue
                        start, length = cut
                        so = spiece.local_start + start - spiece.start
                        do = dpiece.local_start + start - dpiece.start
                        for dl in dg.holders:
                            dst = dst0 + dl
                            if collocated and dst in sg.holders:
                                local.append(Transfer(pi, dst, dst, start, length, so, do))
                            else:
                                groups[sg.holders].append(_Atom(dst, pi, start, length, so, do))

    unit = [p.index_bytes for p in inv.params]
    demand = {h: sum(a.length * unit[a.param] for a in atoms) for h, atoms in groups.items()}
    shares, bound = min_max_shares(demand)
    network: list[Transfer] = []
    for holders, atoms in groups.items():
        atoms.sort()
        network.extend(_cut_stream(atoms, [(s, shares[holders].get(s, 0)) for s in holders], unit))
    transfers = _coalesce(sorted(local + network, key=lambda t: (t.src, t.dst, t.param, t.start)))
    return Plan(world, inv, tuple(transfers), bound)


def _cut_stream(atoms: list[_Atom], quotas: list[tuple[int, int]], unit: list[int]) -> list[Transfer]:
    """Serve the atoms in order: each source takes a contiguous run of the stream, its quota's worth.

    Cuts fall on whole indices of the split dimension, so a source's load differs from its quota
    by less than one row (or column) per cut.
    """
    out: list[Transfer] = []
    senders = [s for s, q in quotas if q > 0] or [quotas[0][0]]
    bounds: list[int] = []
    acc = 0
    for s, q in quotas:
        if q > 0:
            acc += q
            bounds.append(acc)
    k = 0
    pos = 0  # stream position in bytes at the start of the current atom
    for a in atoms:
        ub = unit[a.param]
        done = 0
        while done < a.length:
            if k < len(senders) - 1:
                room = bounds[k] - (pos + done * ub)
                take = min(a.length - done, max(0, round(room / ub)))
            else:
                take = a.length - done
            if take > 0:
                out.append(Transfer(a.param, senders[k], a.dst, a.start + done, take,
                                    a.src_offset + done, a.dst_offset + done))
                done += take
            if done < a.length:
                k += 1
        pos += a.length * ub
    return out


def _coalesce(ts: list[Transfer]) -> list[Transfer]:
    """Merge transfers that continue each other (same pair and parameter, adjacent on both sides)."""
    out: list[Transfer] = []
    for t in ts:
        if out:
            p = out[-1]
            if (p.src, p.dst, p.param) == (t.src, t.dst, t.param) and p.start + p.length == t.start \
                    and p.src_offset + p.length == t.src_offset and p.dst_offset + p.length == t.dst_offset:
                out[-1] = p._replace(length=p.length + t.length)
                continue
        out.append(t)
    return out
