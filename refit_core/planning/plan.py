"""The transfer plan: which source rank sends which slice of which parameter to which destination.

Every element of every destination shard is delivered exactly once. A slice a destination rank
already holds as a source (collocated mode) becomes a local copy. A slice held by several source
replicas is served by them in shares chosen to minimise the largest per-source byte count: the
shares come from a max-flow over (replica set -> source rank) edges, which also yields the best
possible balance (the fractional optimum), the bound the plan's balance figure is measured against.
The plan is a pure function of (inventory, world layout, node map): no process group, no GPU.

Node-aware (a `NodeMap` given): a slice is served from the nearest replica, the destination GPU
itself (a local copy), else a holder on the destination's node (NVLink), else any holder (the
network); the max-flow then balances each link class on its own, so every source's NIC carries
an even share of the bytes that must cross nodes and its NVLink an even share of the rest.
Node-blind (None): every holder is eligible and one max-flow balances all network bytes.

Relayed (`relay=True`, node-aware only): a cross-node slice that several destinations of one node need
enters the node once, to one of them (the relay), which forwards it to the others over NVLink (hop 1,
relay.py); the node's relays split its shared bytes evenly, so each GPU's NIC takes an even share.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from refit_core.planning.balance import min_max_shares
from refit_core.planning.layout import RefitMode, WorldLayout
from refit_core.planning.model import Inventory, ParamSpec
from refit_core.planning.nodes import LINK_CLASSES, NodeMap
from refit_core.planning.precision import BlockGather, block_pieces, destination_inventory, scale_runs
from refit_core.planning.relay import Atom as _Atom
from refit_core.planning.relay import relay as _relay
from refit_core.planning.sharding import Piece, ShardGroup, shard_groups


class Transfer(NamedTuple):
    """Global indices [start, start+length) of `param`'s split dimension, from `src` to `dst`.

    `src_offset`/`dst_offset` are the same range's positions in the source's and destination's
    local tensors (an FP8 scale's local tensor, on either end: the block rows that end's weight
    rows touch, `precision.block_pieces`). `src == dst` marks a local copy.

    `hop` 0: from `src`'s source shard. `hop` 1: forwarded by `src`, a destination rank (the relay),
    from its destination shard at `src_offset`, after it received that range at hop 0 (relay.py).
    """

    param: int
    src: int
    dst: int
    start: int
    length: int
    src_offset: int
    dst_offset: int
    hop: int = 0


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
    nodes: NodeMap | None = None
    """The node map a node-aware plan was made for; None: node-blind."""
    class_bounds: tuple[tuple[str, int], ...] = ()
    """Node-aware: per link class, the best possible largest per-source byte count on it."""
    precision: str = "bf16"
    """The destination's precision (refit_core/planning/precision.py); bytes are the destination's."""
    destination: Inventory | None = None
    """FP8: the destination's parameters (weights in their destination dtype, then the scale tensors,
    which transfers index after the weights); None: the same as `inventory`."""
    gathers: tuple[BlockGather, ...] = ()
    """FP8: scale blocks no source holds whole (a source TP boundary cuts them)."""

    @property
    def params(self) -> tuple[ParamSpec, ...]:
        """What transfers index: the destination's parameters."""
        return (self.destination or self.inventory).params

    @cached_property
    def _unit(self) -> list[int]:
        return [p.index_bytes for p in self.params]

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
        """Largest per-source byte count over the best possible (1.0 = perfectly balanced).

        Node-aware: the worst link class's (NVLink and NIC are separate links, each balanced on its
        own; their sum per source is not what bounds the time)."""
        if self.class_bounds:
            return max((m / b for m, b in self.class_balance.values() if b), default=1.0)
        return self.max_source_bytes / self.balance_bound if self.balance_bound else 1.0

    @cached_property
    def class_out(self) -> dict[str, dict[int, int]]:
        """Node-aware: bytes each source sends on each link class (intra-node, inter-node)."""
        out: dict[str, dict[int, int]] = {c: {r: 0 for r in self.world.source.ranks} for c in LINK_CLASSES}
        if self.nodes is None:
            return out
        for t in self.transfers:
            if t.src != t.dst and not t.hop:
                out[self.nodes.link(t.src, t.dst)][t.src] += self.nbytes(t)
        return out

    @cached_property
    def relayed_bytes(self) -> int:
        """Bytes forwarded by relays (hop 1); 0 in a plan without relays."""
        return sum(self.nbytes(t) for t in self.transfers if t.hop)

    @property
    def class_balance(self) -> dict[str, tuple[int, int]]:
        """Node-aware: per link class, (busiest source's bytes on it, best possible)."""
        bounds = dict(self.class_bounds)
        return {c: (max(self.class_out[c].values(), default=0), bounds.get(c, 0)) for c in LINK_CLASSES}

    def for_rank(self, rank: int, hop: int = 0) -> "RankPlan":
        """What `rank` does at `hop` (0: from the sources; 1: what relays forward, after hop 0)."""
        sends: dict[int, list[Transfer]] = defaultdict(list)
        recvs: dict[int, list[Transfer]] = defaultdict(list)
        local: list[Transfer] = []
        for t in self.transfers:
            if t.hop != hop:
                continue
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


def _intersect(a: Piece, b: Piece) -> tuple[int, int] | None:
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return (lo, hi - lo) if hi > lo else None


def plan_transfers(inv: Inventory, world: WorldLayout, nodes: NodeMap | None = None, precision: str = "bf16",
                   relay: bool = False) -> Plan:
    """Compute the exact, balanced transfer plan of `inv` from world.source to world.destination.

    With `nodes`, node-aware (nearest replica first, each link class balanced on its own). With
    precision "fp8", bytes are the destination's (FP8 weights) and the scale tensors are planned
    too, each block from the source that holds it whole, or gathered (precision.py). With `relay`
    (node-aware only), shared cross-node slices enter each node once and fan out (relay.py)."""
    return _Placed(inv, world, nodes, precision).plan(relay)


def plan_choices(inv: Inventory, world: WorldLayout, nodes: NodeMap,
                 precision: str = "bf16") -> tuple[Plan, Plan]:
    """The plan without relays and the plan with them, placed once (placement is most of a plan's cost); where
    nothing is relayed the two are one plan, balanced once."""
    placed = _Placed(inv, world, nodes, precision)
    relayed = placed.plan(True)
    return (placed.plan(False) if relayed.relayed_bytes else relayed), relayed


class _Placed:
    """Every atom placed (a local copy or a replica group); `plan` balances the groups into a Plan."""

    def __init__(self, inv: Inventory, world: WorldLayout, nodes: NodeMap | None, precision: str) -> None:
        self.inv, self.world, self.nodes, self.precision = inv, world, nodes, precision
        self.placer = placer = _Placer(world, nodes)
        for pi, p in enumerate(inv.params):
            _weight_atoms(placer, inv, pi, p)
        self.dinv = destination_inventory(inv, precision)
        self.gathers: dict[tuple[int, int], BlockGather] = {}
        for wi, si in self.dinv.scales:
            self.gathers.update(_scale_atoms(placer, inv, inv.params[wi], si))
        self.unit = [p.index_bytes for p in self.dinv.inventory.params]
        self.groups = placer.groups.by_holders()

    def plan(self, relay: bool) -> Plan:
        groups, forwards = self.groups, []
        if relay and self.nodes is not None:
            groups, forwards = _relay(groups, self.nodes, self.unit)
        network, bound, class_bounds = _balanced(groups, self.nodes, self.unit)
        network += [Transfer(f.param, f.relay, f.dst, f.start, f.length, f.relay_offset, f.dst_offset, 1)
                    for f in forwards]
        transfers = _coalesce(sorted(self.placer.local + network, key=lambda t: (t.src, t.dst, t.param, t.start)))
        dinv, gathers = self.dinv, self.gathers
        return Plan(self.world, self.inv, tuple(transfers), bound, self.nodes, tuple(class_bounds), self.precision,
                    dinv.inventory if dinv.scales else None, tuple(gathers[k] for k in sorted(gathers)))


class _Placer:
    """Where each atom goes: a local copy (collocated, the destination holds it already) or the group of
    replicas that may serve it."""

    def __init__(self, world: WorldLayout, nodes: NodeMap | None) -> None:
        self.world, self.groups = world, _Groups(nodes)
        self.collocated = world.mode is RefitMode.COLLOCATED
        self.src0, self.dst0 = world.source.first_rank, world.destination.first_rank
        self.local: list[Transfer] = []

    def place(self, holders: tuple[int, ...], dst: int, atom: _Atom) -> None:
        if self.collocated and self.groups.holds(holders, dst):
            self.local.append(Transfer(atom.param, dst, dst, atom.start, atom.length, atom.src_offset, atom.dst_offset))
        else:
            self.groups.add(holders, dst, atom)


def _weight_atoms(placer: _Placer, inv: Inventory, pi: int, p: ParamSpec) -> None:
    """Every destination piece of parameter `pi` cut against every source piece: one atom per overlap and holder."""
    spec, w = inv.spec, placer.world
    src0, dst0 = placer.src0, placer.dst0
    sgs = [ShardGroup(g.pieces, tuple(src0 + h for h in g.holders))
           for g in shard_groups(p, w.source.layout, spec.num_layers, spec.num_experts)]
    for dg in shard_groups(p, w.destination.layout, spec.num_layers, spec.num_experts):
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
                        placer.place(sg.holders, dst0 + dl, _Atom(dst0 + dl, pi, start, length, so, do))


def _scale_atoms(placer: _Placer, inv: Inventory, p: ParamSpec, si: int) -> dict[tuple[int, int], BlockGather]:
    """FP8: the scale blocks of weight `p` (scale parameter `si`), each from a source holding the block whole;
    the blocks none holds whole are returned as gathers."""
    spec, w = inv.spec, placer.world
    src0, dst0 = placer.src0, placer.dst0
    gathers: dict[tuple[int, int], BlockGather] = {}
    sgs = [(g.pieces, tuple(src0 + h for h in g.holders))
           for g in shard_groups(p, w.source.layout, spec.num_layers, spec.num_experts)]
    held = {holders: block_pieces(pieces) for pieces, holders in sgs}  # the source's local scale rows
    for dg in shard_groups(p, w.destination.layout, spec.num_layers, spec.num_experts):
        for bpiece in block_pieces(dg.pieces):
            runs, cut = scale_runs(p, sgs, si, bpiece)
            gathers.update({(g.param, g.start): g for g in cut})
            for b0, n, holders in runs:
                do = bpiece.local_start + b0 - bpiece.start
                so = _block_offset(held[holders], b0, n)
                for dl in dg.holders:
                    placer.place(holders, dst0 + dl, _Atom(dst0 + dl, si, b0, n, so, do))
    return gathers


def _balanced(by_holders: dict[tuple[str, tuple[int, ...]], list[_Atom]], nodes: NodeMap | None,
              unit: list[int]) -> tuple[list[Transfer], int, list[tuple[str, int]]]:
    """The network transfers, each replica group's bytes shared among its holders by the max-flow that minimises
    the busiest source; the bound it reaches, and (node-aware) each link class's."""
    demand = {k: sum(a.length * unit[a.param] for a in atoms) for k, atoms in by_holders.items()}
    shares: dict[tuple[str, tuple[int, ...]], dict[int, int]] = {}
    class_bounds: list[tuple[str, int]] = []
    bound = 0
    for cls in sorted({c for c, _ in demand}):
        got, bound = min_max_shares({h: v for (c, h), v in demand.items() if c == cls})
        shares.update({(cls, h): s for h, s in got.items()})
        if cls:
            class_bounds.append((cls, bound))
    if nodes is not None:
        bound = min_max_shares(_merge(demand))[1]
    network: list[Transfer] = []
    for (cls, holders), atoms in by_holders.items():
        atoms = sorted(atoms)
        got = shares.get((cls, holders), {})
        network.extend(_cut_stream(atoms, [(s, got.get(s, 0)) for s in holders], unit))
    return network, bound, class_bounds


class _Groups:
    """Atoms by the replicas that may serve them, (link class, holders) -> atoms, with each holder set
    known by identity. The same holder tuples recur for every atom of a parameter; hashing or scanning
    one per atom costs its length, which for a dense weight (held by every source rank) made the plan
    quadratic in the rank count. Here each distinct tuple object is hashed, scanned and placed once."""

    def __init__(self, nodes: NodeMap | None) -> None:
        self.nodes = nodes
        self.seen: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # id -> (object kept alive, its canonical)
        self.canonical: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.sets: dict[int, frozenset[int]] = {}
        self.nearest: dict[tuple[int, int], tuple[str, int]] = {}
        self.atoms: dict[tuple[str, int], list[_Atom]] = defaultdict(list)

    def _canon(self, holders: tuple[int, ...]) -> tuple[int, ...]:
        hit = self.seen.get(id(holders))
        if hit is None:
            one = self.canonical.setdefault(holders, holders)
            hit = self.seen[id(holders)] = (holders, one)
        return hit[1]

    def holds(self, holders: tuple[int, ...], rank: int) -> bool:
        one = self._canon(holders)
        s = self.sets.get(id(one))
        if s is None:
            s = self.sets[id(one)] = frozenset(one)
        return rank in s

    def add(self, holders: tuple[int, ...], dst: int, atom: _Atom) -> None:
        one = self._canon(holders)
        if self.nodes is None:
            self.atoms[("", id(one))].append(atom)
            return
        key = (id(one), self.nodes.node(dst))
        where = self.nearest.get(key)
        if where is None:
            cls, near = self.nodes.nearest_holders(one, dst)
            where = self.nearest[key] = (cls, id(self._canon(near)))
        self.atoms[where].append(atom)

    def by_holders(self) -> dict[tuple[str, tuple[int, ...]], list[_Atom]]:
        tuples = {id(one): one for one in self.canonical.values()}
        return {(cls, tuples[i]): atoms for (cls, i), atoms in self.atoms.items()}


def _block_offset(pieces: tuple[Piece, ...], start: int, length: int) -> int:
    """Where scale blocks [start, start+length) sit in a source's local scale tensor (its
    `block_pieces`, the blocks its weight rows touch: what it quantises and sends)."""
    for pc in pieces:
        if pc.start <= start and start + length <= pc.stop:
            return pc.local_start + start - pc.start
    raise AssertionError(f"scale blocks [{start}, {start + length}) are not among the sender's {pieces}")


def _merge(demand: dict[tuple[str, tuple[int, ...]], int]) -> dict[tuple[int, ...], int]:
    """Demand per holder set over all link classes: the busiest source's total bound."""
    out: dict[tuple[int, ...], int] = defaultdict(int)
    for (_, holders), v in demand.items():
        out[holders] += v
    return dict(out)


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
            if (p.src, p.dst, p.param, p.hop) == (t.src, t.dst, t.param, t.hop) and p.start + p.length == t.start \
                    and p.src_offset + p.length == t.src_offset and p.dst_offset + p.length == t.dst_offset:
                out[-1] = p._replace(length=p.length + t.length)
                continue
        out.append(t)
    return out
