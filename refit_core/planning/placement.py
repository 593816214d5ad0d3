"""Where each rank keeps its shards for the one-sided (NVSHMEM) refit: symmetric heap or private.

NVSHMEM's symmetric heap has one size on every PE, and only heap memory can be reached by a
peer. A refit needs only one role reachable: the destination shards when sources write into
them (`push`), or the source shards when destinations read from them (`pull`). That role goes
whole into the heap, whose size is therefore the largest such shard; the other role fills what
room is left on its rank (whole tensors, first fit) and the rest lives in ordinary private
memory. So no GPU holds heap bytes it does not use, beyond one tensor's alignment slack or the
difference between the largest and its own reachable shard, and no byte is staged twice.

`auto` takes whichever direction leaves the fewest unused heap bytes on the worst rank (push on
a tie: remote writes are posted, remote reads wait). `all` keeps both roles whole in the heap,
source first (the layout a `put` fallback needs when a peer cannot be mapped, e.g. across nodes
without NVLink). Pure: offsets only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Sequence

from refit_core.errors import ConfigError
from refit_core.planning.storage import ALIGN, Slot, Storage, aligned
from refit_core.planning.layout import WorldLayout

DIRECTIONS = ("auto", "push", "pull", "all")  # --nvshmem-placement


def nvshmem_direction(world: WorldLayout, placement: str, gpus_per_node: int | None = None) -> str:
    """The placement the NVSHMEM transport uses for --nvshmem-placement `placement`: `all` for `auto`
    across nodes (peers there may be unmappable and need `put`), else `placement` itself."""
    if placement == "auto" and gpus_per_node is not None and world.gpus_used > gpus_per_node:
        return "all"
    return placement


@dataclass(frozen=True)
class Part:
    """Some of a rank's shards of one role, contiguous from byte `start` of the heap or of the
    rank's private buffer; slot offsets are relative to `start`."""

    in_heap: bool
    start: int
    storage: Storage


@dataclass(frozen=True)
class RankPlacement:
    """One rank's source and destination shards, each as up to two parts (heap, private)."""

    rank: int
    source: tuple[Part, ...]
    destination: tuple[Part, ...]
    heap_used: int
    private_bytes: int

    @cached_property
    def _where(self) -> dict[tuple[str, int], tuple[bool, int]]:
        out: dict[tuple[str, int], tuple[bool, int]] = {}
        for role, parts in (("source", self.source), ("destination", self.destination)):
            for part in parts:
                for s in part.storage.slots:
                    out[role, s.param] = (part.in_heap, part.start + s.offset)
        return out

    def slot(self, role: str, param: int, slot: Slot) -> tuple[bool, Slot]:
        """(in heap?, `slot` with its offset in that buffer) for this rank's shard of `param`."""
        in_heap, off = self._where[role, param]
        return in_heap, replace(slot, offset=off)


@dataclass(frozen=True)
class Placement:
    """Every active rank's placement and the heap size they share."""

    direction: str  # push | pull | all
    heap_bytes: int
    ranks: tuple[RankPlacement, ...]  # index = rank

    def unused_heap(self, rank: int) -> int:
        """Heap bytes `rank` allocates but holds no shard in."""
        return self.heap_bytes - self.ranks[rank].heap_used

    @property
    def max_unused_heap(self) -> int:
        return max((self.unused_heap(r.rank) for r in self.ranks), default=0)


@dataclass(frozen=True)
class HeapLayout:
    """The placement decision alone, from slot sizes: what `memory.py` needs and `place` uses."""

    direction: str
    heap_bytes: int
    heap_used: tuple[int, ...]  # per rank
    private_bytes: tuple[int, ...]  # per rank
    in_heap: tuple[tuple[bool, ...], ...]  # per rank: for each slot of the non-reached role, in the heap?

    @property
    def max_unused_heap(self) -> int:
        return max((self.heap_bytes - u for u in self.heap_used), default=0)


Sizes = Sequence[tuple[Sequence[int] | None, Sequence[int] | None]]
"""Per active rank: aligned byte sizes of its (source, destination) slots in order; None: no such role."""


def _layout(sizes: Sizes, direction: str) -> HeapLayout:
    if direction == "all":
        heap = aligned(max([ALIGN] + [sum(s or ()) + sum(d or ()) for s, d in sizes]))
        used = tuple(sum(s or ()) + sum(d or ()) for s, d in sizes)
        return HeapLayout("all", heap, used, (0,) * len(sizes), tuple(() for _ in sizes))
    reach = 1 if direction == "push" else 0  # index of the role peers reach: destination or source
    heap = aligned(max([ALIGN] + [sum(st[reach]) for st in sizes if st[reach] is not None]))
    used, private, in_heap = [], [], []
    for st in sizes:
        taken = sum(st[reach] or ())
        spill = 0
        flags = []
        for n in st[1 - reach] or ():  # first fit, in order
            fits = taken + n <= heap
            flags.append(fits)
            taken, spill = (taken + n, spill) if fits else (taken, spill + n)
        used.append(taken)
        private.append(spill)
        in_heap.append(tuple(flags))
    return HeapLayout(direction, heap, tuple(used), tuple(private), tuple(in_heap))


def layout_heap(sizes: Sizes, direction: str = "auto") -> HeapLayout:
    """Choose the direction (`auto`: fewest unused heap bytes on the worst rank, push on a tie)
    and which slots of the non-reached role fit in the heap."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"NVSHMEM placement {direction!r}: use one of {', '.join(DIRECTIONS)}")
    if direction != "auto":
        return _layout(sizes, direction)
    push, pull = _layout(sizes, "push"), _layout(sizes, "pull")
    return pull if pull.max_unused_heap < push.max_unused_heap else push


def _sizes(st: Storage | None) -> tuple[int, ...] | None:
    return None if st is None else tuple(aligned(s.nbytes) for s in st.slots)


def _dense(slots: Sequence[Slot]) -> Storage:
    out, off = [], 0
    for s in slots:
        out.append(replace(s, offset=off))
        off += aligned(s.nbytes)
    return Storage(tuple(out), off)


def _parts(heap: Storage, heap_start: int, private: Storage) -> tuple[Part, ...]:
    out = []
    if heap.slots:
        out.append(Part(True, heap_start, heap))
    if private.slots:
        out.append(Part(False, 0, private))
    return tuple(out)


def place(storages: Sequence[tuple[Storage | None, Storage | None]], direction: str = "auto") -> Placement:
    """Placement of every active rank's (source, destination) shards; index = rank."""
    hl = layout_heap([(_sizes(s), _sizes(d)) for s, d in storages], direction)
    empty = Storage((), 0)
    ranks = []
    for r, (s, d) in enumerate(storages):
        s, d = s or empty, d or empty
        if hl.direction == "all":
            src, dst = _parts(s, 0, empty), _parts(d, aligned(s.nbytes), empty)
        else:
            reached, other = (d, s) if hl.direction == "push" else (s, d)
            flags = hl.in_heap[r]
            inside = _dense([x for x, f in zip(other.slots, flags) if f])
            outside = _dense([x for x, f in zip(other.slots, flags) if not f])
            reached_parts = _parts(reached, 0, empty)
            other_parts = _parts(inside, aligned(reached.nbytes), outside)
            src, dst = (other_parts, reached_parts) if hl.direction == "push" else (reached_parts, other_parts)
        ranks.append(RankPlacement(r, src, dst, hl.heap_used[r], hl.private_bytes[r]))
    return Placement(hl.direction, hl.heap_bytes, tuple(ranks))
