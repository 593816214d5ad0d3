"""Where a rank keeps its shards: one flat byte buffer per role, each parameter at a fixed offset.

One flat buffer per rank and role (as Megatron's DDP keeps its parameters) lets a whole refit be
described as byte blocks between buffers, which one kernel launch can copy. Pure: offsets only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from refit_core.planning.layout import ParallelLayout
from refit_core.planning.model import DTYPE_BYTES, Inventory
from refit_core.planning.sharding import Piece, local_shape, rank_pieces

ALIGN = 256  # bytes; keeps every parameter 16-byte aligned for vector copies


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGN: where the next tensor (or chunk) of a buffer starts.
    The one rounding every buffer layout uses (shards, staging, heap, the memory fit)."""
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class Slot:
    """One parameter's shard inside a rank's buffer."""

    param: int
    offset: int
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    itemsize: int

    @property
    def nbytes(self) -> int:
        n = self.itemsize
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Storage:
    """A rank's shards of one model (source or destination), laid out in one buffer."""

    slots: tuple[Slot, ...]
    nbytes: int

    @cached_property
    def by_param(self) -> dict[int, Slot]:
        return {s.param: s for s in self.slots}


def rank_storage(inv: Inventory, layout: ParallelLayout, local: int) -> Storage:
    """Every shard local rank `local` of `layout` holds, in inventory order, aligned."""
    spec = inv.spec
    slots: list[Slot] = []
    off = 0
    for i, p in enumerate(inv.params):
        pieces = rank_pieces(p, layout, local, spec.num_layers, spec.num_experts)
        if not pieces:
            continue
        slot = Slot(i, off, local_shape(p, layout), pieces, DTYPE_BYTES[p.dtype])
        slots.append(slot)
        off += aligned(slot.nbytes)
    return Storage(tuple(slots), off)

