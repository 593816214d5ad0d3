"""Check a plan's coverage: every destination element exactly once, from a rank that holds it.

Like Megatron's dist_checkpointing coverage validation, this belongs to the library: the CLI runs
it on demand (`refitctl plan --check`) and the tests run it over random layouts.
"""

from __future__ import annotations

from collections import defaultdict

from refit_core.errors import RefitError
from refit_core.planning.plan import Plan, Transfer
from refit_core.planning.sharding import Piece, rank_pieces


class CoverageError(RefitError):
    """The plan misses, duplicates or mis-sources a destination slice."""


def _local_range(pieces: tuple[Piece, ...], start: int, length: int) -> int | None:
    """Local offset of global [start, start+length) if one piece holds it whole."""
    for pc in pieces:
        if pc.start <= start and start + length <= pc.stop:
            return pc.local_start + start - pc.start
    return None


def check_plan(plan: Plan) -> None:
    """Raise CoverageError naming the first parameter and rank whose coverage is wrong."""
    inv, world = plan.inventory, plan.world
    spec = inv.spec
    src_l, dst_l = world.source.layout, world.destination.layout
    got: dict[tuple[int, int], list[Transfer]] = defaultdict(list)
    for t in plan.transfers:
        if t.length <= 0:
            raise CoverageError(f"empty transfer {t}")
        p = inv.params[t.param]
        sl = world.source.local(t.src)
        if sl is None:
            raise CoverageError(f"{p.name}: rank {t.src} sends but is not a source rank")
        so = _local_range(rank_pieces(p, src_l, sl, spec.num_layers, spec.num_experts), t.start, t.length)
        if so != t.src_offset:
            raise CoverageError(f"{p.name}: source rank {t.src} does not hold [{t.start}, {t.start + t.length}) "
                                f"at local offset {t.src_offset}")
        got[(t.dst, t.param)].append(t)
    for dst in world.destination.ranks:
        dl = dst - world.destination.first_rank
        for pi, p in enumerate(inv.params):
            pieces = rank_pieces(p, dst_l, dl, spec.num_layers, spec.num_experts)
            ts = sorted(got.pop((dst, pi), []), key=lambda t: t.start)
            want = sorted((pc.start, pc.length) for pc in pieces)
            have: list[tuple[int, int]] = []
            for t in ts:
                if _local_range(pieces, t.start, t.length) != t.dst_offset:
                    raise CoverageError(f"{p.name}: destination rank {dst} gets [{t.start}, {t.start + t.length}) "
                                        f"at wrong local offset {t.dst_offset}")
                if have and have[-1][0] + have[-1][1] > t.start:
                    raise CoverageError(f"{p.name}: destination rank {dst} receives index {t.start} twice")
                if have and have[-1][0] + have[-1][1] == t.start:
                    have[-1] = (have[-1][0], have[-1][1] + t.length)
                else:
                    have.append((t.start, t.length))
            merged: list[tuple[int, int]] = []
            for s, n in want:
                if merged and merged[-1][0] + merged[-1][1] == s:
                    merged[-1] = (merged[-1][0], merged[-1][1] + n)
                else:
                    merged.append((s, n))
            if have != merged:
                raise CoverageError(f"{p.name}: destination rank {dst} needs {merged} but the plan delivers {have}")
    if got:
        (dst, pi), _ = next(iter(got.items()))
        raise CoverageError(f"{inv.params[pi].name}: rank {dst} receives a slice it does not hold")
