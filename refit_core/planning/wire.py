"""A rank's shards as they travel and land: in the destination's precision.

BF16 runs move the source's own shards. FP8 runs (planning/precision.py) move a send image: the
sender quantises its shards into FP8 weights plus the `weight_scale_inv` rows its weight rows touch
(`block_pieces`), laid out like any shard buffer, and the destination holds the same kinds of slots.
Both ends of a transfer therefore describe their bytes with `wire_storage`, and the transports stay
byte-generic: they copy slots of the plan's destination parameters (`Plan.params`). Pure: offsets only.
"""

from __future__ import annotations

from refit_core.planning.storage import ALIGN, Slot, Storage, rank_storage
from refit_core.planning.layout import ParallelLayout
from refit_core.planning.model import DTYPE_BYTES
from refit_core.planning.plan import Plan
from refit_core.planning.precision import block_pieces, destination_inventory
from refit_core.planning.sharding import local_shape, rank_pieces


def scale_weights(plan: Plan) -> dict[int, int]:
    """FP8: scale parameter index -> the weight it scales (both index `plan.params`); bf16: empty."""
    if plan.destination is None:
        return {}
    return {si: wi for wi, si in destination_inventory(plan.inventory, plan.precision).scales}


def wire_storage(plan: Plan, layout: ParallelLayout, local: int) -> Storage:
    """Every shard local rank `local` of `layout` holds in the destination's precision, aligned:
    each parameter of `plan.params` in its destination dtype, an FP8 weight's scale as the block
    rows (or columns, for a row-parallel weight) its weight rows touch."""
    if plan.destination is None:
        return rank_storage(plan.inventory, layout, local)
    spec = plan.inventory.spec
    weight_of = scale_weights(plan)
    slots: list[Slot] = []
    off = 0
    for i, p in enumerate(plan.params):
        if i in weight_of:
            w = plan.inventory.params[weight_of[i]]
            pieces = block_pieces(rank_pieces(w, layout, local, spec.num_layers, spec.num_experts))
            shape = list(p.shape)
            shape[p.split_dim] = sum(pc.length for pc in pieces)
            shape_t = tuple(shape)
        else:
            pieces = rank_pieces(p, layout, local, spec.num_layers, spec.num_experts)
            shape_t = local_shape(p, layout)
        if not pieces:
            continue
        slot = Slot(i, off, shape_t, pieces, DTYPE_BYTES[p.dtype])
        slots.append(slot)
        off += -(-slot.nbytes // ALIGN) * ALIGN
    return Storage(tuple(slots), off)


def shard_storage(plan: Plan, role: str, rank: int) -> Storage | None:
    """Rank `rank`'s wire shards of `role` ("source" or "destination"), None if it has none."""
    side = plan.world.source if role == "source" else plan.world.destination
    local = side.local(rank)
    return None if local is None else wire_storage(plan, side.layout, local)


def rank_storages(plan: Plan, rank: int) -> tuple[Storage | None, Storage | None]:
    """Rank `rank`'s (source, destination) shard storages as they travel (the destination's precision;
    BF16 plans: the shards as the layouts hold them); None for a role it does not have. What the engine
    builds for its own rank and the one-sided transports for every peer."""
    return shard_storage(plan, "source", rank), shard_storage(plan, "destination", rank)
