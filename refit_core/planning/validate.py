"""Check a plan's coverage: every destination element exactly once, from a rank that holds it.

A relayed byte (hop 1) counts like any other for its destination; its sender must be a destination rank
that received that very range at hop 0 (or holds it as a local copy) at the offset it forwards from.

Like Megatron's dist_checkpointing coverage validation, this belongs to the library: the CLI runs
it on demand (`refitctl plan --check`) and the tests run it over random layouts.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

from refit_core.errors import RefitError
from refit_core.planning.layout import ParallelLayout
from refit_core.planning.plan import Plan, Transfer
from refit_core.planning.precision import block_pieces, destination_inventory, whole_blocks
from refit_core.planning.sharding import Piece, rank_pieces


class CoverageError(RefitError):
    """The plan misses, duplicates or mis-sources a destination slice."""


def _local_range(pieces: tuple[Piece, ...], start: int, length: int) -> int | None:
    """Local offset of global [start, start+length) if one piece holds it whole."""
    for pc in pieces:
        if pc.start <= start and start + length <= pc.stop:
            return pc.local_start + start - pc.start
    return None


class _Coverage:
    """What a plan must deliver, per parameter and rank: the slices each source holds and each destination needs."""

    def __init__(self, plan: Plan) -> None:
        inv = plan.inventory
        self.plan, self.inv, self.spec, self.world = plan, inv, inv.spec, plan.world
        self.weight_of = {si: wi for wi, si in destination_inventory(inv, plan.precision).scales}
        self.gathered = {(g.param, g.start + k): g.owners for g in plan.gathers for k in range(g.length)}

    def pieces(self, pi: int, layout: ParallelLayout, local: int) -> tuple[Piece, ...]:
        spec = self.spec
        if pi in self.weight_of:
            return block_pieces(rank_pieces(self.inv.params[self.weight_of[pi]], layout, local, spec.num_layers,
                                            spec.num_experts))
        return rank_pieces(self.inv.params[pi], layout, local, spec.num_layers, spec.num_experts)

    def sender_forms(self, t: Transfer, sl: int) -> bool:
        """An FP8 scale transfer: its sender holds each block whole, or owns the block's gather."""
        w = self.inv.params[self.weight_of[t.param]]
        n = w.shape[w.split_dim]
        held = rank_pieces(w, self.world.source.layout, sl, self.spec.num_layers, self.spec.num_experts)
        for b in range(t.start, t.start + t.length):
            whole = any(lo <= b < hi for lo, hi in (whole_blocks(pc, n) for pc in held))
            if not whole and t.src not in self.gathered.get((t.param, b), ()):
                return False
        return True

    def check_sender(self, t: Transfer) -> None:
        if t.length <= 0:
            raise CoverageError(f"empty transfer {t}")
        p = self.plan.params[t.param]
        sl = self.world.source.local(t.src)
        if sl is None:
            raise CoverageError(f"{p.name}: rank {t.src} sends but is not a source rank")
        if t.param in self.weight_of:
            if not self.sender_forms(t, sl):
                raise CoverageError(f"{p.name}: source rank {t.src} cannot form scale blocks "
                                    f"[{t.start}, {t.start + t.length})")
            return
        so = _local_range(rank_pieces(p, self.world.source.layout, sl, self.spec.num_layers, self.spec.num_experts),
                          t.start, t.length)
        if so != t.src_offset:
            raise CoverageError(f"{p.name}: source rank {t.src} does not hold [{t.start}, {t.start + t.length}) "
                                f"at local offset {t.src_offset}")

    def check_relay(self, t: Transfer, received: dict[tuple[int, int], list[tuple[int, int]]]) -> None:
        """Hop 1: the relay is a destination rank holding [start, start+length) at `src_offset`, delivered
        to it at hop 0 (`received`: per (relay, param), the local ranges it gets at hop 0, merged)."""
        if t.length <= 0:
            raise CoverageError(f"empty transfer {t}")
        p = self.plan.params[t.param]
        rl = self.world.destination.local(t.src)
        if rl is None:
            raise CoverageError(f"{p.name}: rank {t.src} relays but is not a destination rank")
        held = self.pieces(t.param, self.world.destination.layout, rl)
        if not any(pc.start <= t.start and t.start + t.length <= pc.stop
                   and pc.local_start + t.start - pc.start == t.src_offset for pc in held):
            raise CoverageError(f"{p.name}: relay {t.src} does not hold [{t.start}, {t.start + t.length}) "
                                f"at local offset {t.src_offset}")
        runs = received.get((t.src, t.param), [])
        i = bisect.bisect_right(runs, (t.src_offset, float("inf"))) - 1
        if i < 0 or runs[i][0] + runs[i][1] < t.src_offset + t.length:
            raise CoverageError(f"{p.name}: relay {t.src} forwards [{t.start}, {t.start + t.length}) "
                                "that it does not receive at hop 0")

    def check_destination(self, dst: int, pi: int, ts: list[Transfer]) -> None:
        """Rank `dst` gets exactly its local slices of parameter `pi`, each once, at the right local offsets.
        Compared in local positions: an FP8 scale block can sit twice in one shard (a SwiGLU fc1 whose gate ends
        inside a block needs it for the gate part and the up part)."""
        p = self.plan.params[pi]
        held = self.pieces(pi, self.world.destination.layout, dst - self.world.destination.first_rank)
        have: list[tuple[int, int]] = []
        for t in sorted(ts, key=lambda t: t.dst_offset):
            if not any(pc.start <= t.start and t.start + t.length <= pc.stop
                       and pc.local_start + t.start - pc.start == t.dst_offset for pc in held):
                raise CoverageError(f"{p.name}: destination rank {dst} gets [{t.start}, {t.start + t.length}) "
                                    f"at wrong local offset {t.dst_offset}")
            if have and have[-1][0] + have[-1][1] > t.dst_offset:
                raise CoverageError(f"{p.name}: destination rank {dst} receives index {t.start} twice")
            if have and have[-1][0] + have[-1][1] == t.dst_offset:
                have[-1] = (have[-1][0], have[-1][1] + t.length)
            else:
                have.append((t.dst_offset, t.length))
        merged: list[tuple[int, int]] = []
        for s, n in sorted((pc.local_start, pc.length) for pc in held):
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        if have != merged:
            raise CoverageError(f"{p.name}: destination rank {dst} needs local {merged} but the plan delivers {have}")


def check_plan(plan: Plan) -> None:
    """Raise CoverageError naming the first parameter and rank whose coverage is wrong.

    FP8 scale tensors (indices after the weights): every destination gets the scale blocks of its
    weight rows exactly once, each from a source holding the block whole or owning its gather."""
    cov = _Coverage(plan)
    got: dict[tuple[int, int], list[Transfer]] = defaultdict(list)
    for t in plan.transfers:
        if not t.hop:
            cov.check_sender(t)
        elif t.hop != 1:
            raise CoverageError(f"{plan.params[t.param].name}: transfer {t} has hop {t.hop} (0 or 1 only)")
        got[(t.dst, t.param)].append(t)
    received = _hop0_ranges(plan)
    for t in plan.transfers:
        if t.hop:
            cov.check_relay(t, received)
    for dst in plan.world.destination.ranks:
        for pi in range(len(plan.params)):
            cov.check_destination(dst, pi, got.pop((dst, pi), []))
    if got:
        (dst, pi), _ = next(iter(got.items()))
        raise CoverageError(f"{plan.params[pi].name}: rank {dst} receives a slice it does not hold")


def _hop0_ranges(plan: Plan) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Per (destination rank, parameter): the local (offset, length) ranges it receives at hop 0, merged."""
    raw: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for t in plan.transfers:
        if not t.hop:
            raw[(t.dst, t.param)].append((t.dst_offset, t.length))
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for key, runs in raw.items():
        merged: list[tuple[int, int]] = []
        for o, n in sorted(runs):
            if merged and merged[-1][0] + merged[-1][1] >= o:
                merged[-1] = (merged[-1][0], max(merged[-1][1], o + n - merged[-1][0]))
            else:
                merged.append((o, n))
        out[key] = merged
    return out
