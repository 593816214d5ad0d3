"""Does the refit fit in GPU memory: per GPU, the source shard, the destination shard and the buffers.

A GPU holds what its role gives it: a source rank its shard of the training layout, a destination
rank its shard of the inference layout (a collocated GPU both), each laid out as
`storage.rank_storage` lays it (every tensor 256-byte aligned). On top of the shards, what the
transport allocates:

- nccl / gloo (transports/staged.py): packed staging buffers, two alternating sets whose chunk
  size keeps them within `bucket_bytes` per rank; counted as `bucket_bytes` on every active GPU.
  A relay (relayed plans, relay.py) holds nothing more: it forwards from its own destination shard,
  and the second hop stages through the first set (its peers count in the chunk size too).
- nvshmem (transports/nvshmem.py): the symmetric heap, one size on every PE, holds the role peers
  reach whole and as much of the other role as fits (placement.py); the rest of the other role
  is private memory, which is shard, not buffer. A GPU's buffer bytes are the heap bytes it holds
  no shard in, plus NVSHMEM's own memory (NVSHMEM_OVERHEAD_BYTES, measured).

Shard sizes come from `sharding.shard_groups`, the one function that says which slice each rank
holds, so the memory figure and the transfer plan cannot disagree. Weights only: optimizer state,
activations, KV cache, the CUDA context and NCCL's own buffers are not counted, so a config that
fits here is necessary, not sufficient.
"""

from __future__ import annotations

from dataclasses import dataclass

from refit_core.errors import ConfigError
from refit_core.numbers import gib
from refit_core.planning.layout import ParallelLayout, WorldLayout
from refit_core.planning.model import Inventory
from refit_core.planning.placement import layout_heap, nvshmem_direction
from refit_core.planning.sharding import shard_groups
from refit_core.planning.storage import aligned
from refit_core.planning import methods

NVSHMEM_RESERVE_BYTES = 512 << 20
"""Added to the symmetric buffer's size in NVSHMEM_SYMMETRIC_SIZE by transports/nvshmem.py: address
space for NVSHMEM's own symmetric objects; heap memory is mapped only as allocated (measured: the
free memory dropped by the same amount with 0, 32 MiB, 128 MiB or 512 MiB here)."""
NVSHMEM_GRANULARITY_BYTES = 2 << 20
"""NVSHMEM_CUMEM_GRANULARITY the transport sets: heap memory is mapped in chunks this small."""
NVSHMEM_OVERHEAD_BYTES = 224 << 20
"""NVSHMEM's own device memory per PE (init, with 2 MiB granularity), measured 205-214 MB per PE
on one H100 with nvshmem4py 0.4.1 (docs/benchmarks.md); rounded up."""


@dataclass(frozen=True)
class RankMemory:
    """Bytes one GPU needs during a refit."""

    rank: int
    role: str
    source_bytes: int
    destination_bytes: int
    buffer_bytes: int

    @property
    def total(self) -> int:
        return self.source_bytes + self.destination_bytes + self.buffer_bytes


@dataclass(frozen=True)
class MemoryFit:
    """Every GPU's need against the per-GPU limit; `busiest` is the GPU that decides the fit."""

    per_rank: tuple[RankMemory, ...]
    limit_bytes: int

    @property
    def busiest(self) -> RankMemory:
        return max(self.per_rank, key=lambda m: (m.total, m.source_bytes + m.destination_bytes, -m.rank))

    @property
    def max_bytes(self) -> int:
        return self.busiest.total

    @property
    def fits(self) -> bool:
        return self.max_bytes <= self.limit_bytes

    @property
    def headroom_bytes(self) -> int:
        """Limit minus the busiest GPU's need (negative: that far over)."""
        return self.limit_bytes - self.max_bytes


def slot_sizes(inv: Inventory, layout: ParallelLayout) -> list[list[int]]:
    """Aligned bytes of each local rank's shards in `layout`, in inventory order (as `storage.rank_storage`
    lays them out; index = local rank)."""
    spec = inv.spec
    held: list[list[int]] = [[] for _ in range(layout.size)]
    for p in inv.params:
        for g in shard_groups(p, layout, spec.num_layers, spec.num_experts):
            b = aligned(sum(pc.length for pc in g.pieces) * p.index_bytes)
            for h in g.holders:
                held[h].append(b)
    return held


def memory_fit(inv: Inventory, world: WorldLayout, method: str, bucket_bytes: int, limit_bytes: int,
               gpus_per_node: int | None = None, destination_slots: list[list[int]] | None = None,
               nvshmem_placement: str = "auto", send_image_slots: list[list[int]] | None = None) -> MemoryFit:
    """Per-GPU bytes of a refit of `inv` on `world` by `method`, against `limit_bytes` per GPU; a method
    whose buffers are NVSHMEM's heap lays it out as the run will (`nvshmem_placement`, placement.py).

    `destination_slots`: the destination shards' sizes when they differ from the source's dtype
    (FP8: `precision.destination_slot_sizes`). `send_image_slots`: what a source rank quantises its
    shards into before they travel (FP8: the same sizes on the source layout), held beside its BF16
    shards and counted with its buffers."""
    src = slot_sizes(inv, world.source.layout)
    dst = destination_slots if destination_slots is not None else slot_sizes(inv, world.destination.layout)
    slots = []
    for r in range(world.world_size):
        sl, dl = world.source.local(r), world.destination.local(r)
        slots.append((src[sl] if sl is not None else None, dst[dl] if dl is not None else None))
    shards = [(sum(s or ()), sum(d or ())) for s, d in slots]
    active = range(world.gpus_used)
    if methods.method(method).buffers == "nvshmem-heap":
        hl = layout_heap([slots[r] for r in active], nvshmem_direction(world, nvshmem_placement, gpus_per_node))
        buffers = [hl.heap_bytes - hl.heap_used[r] + NVSHMEM_OVERHEAD_BYTES for r in active]
    else:
        buffers = [bucket_bytes] * len(shards)
    if send_image_slots is not None:
        for r in active:
            sl = world.source.local(r)
            if sl is not None:
                buffers[r] += sum(send_image_slots[sl])
    out = tuple(
        RankMemory(r, world.role(r), s, d, buffers[r] if r in active else 0)
        for r, (s, d) in enumerate(shards)
    )
    return MemoryFit(out, limit_bytes)


def check_memory(fit: MemoryFit, gpu_memory_gb: float, method: str) -> None:
    """Raise a one-line ConfigError saying how far over the busiest GPU is and what to change."""
    if fit.fits:
        return
    m = fit.busiest
    over = -fit.headroom_bytes
    if m.source_bytes >= m.destination_bytes:
        more = "--expert-model-parallel-size (or --pipeline-model-parallel-size)"
    else:
        more = "--rl-inference-expert-model-parallel-size"
    fix = f"use more GPUs with a larger {more} so each GPU holds fewer experts"
    if methods.method(method).buffers == "bucket":
        fix += (", or a smaller --refit-bucket-size" if m.buffer_bytes > over
                else f" (a smaller --refit-bucket-size saves at most {gib(m.buffer_bytes)})")
    raise ConfigError(
        f"GPU {m.rank} ({m.role}) needs {gib(m.total)} (source shard {gib(m.source_bytes)} + destination shard "
        f"{gib(m.destination_bytes)} + {method} buffers {gib(m.buffer_bytes)}) but --gpu-memory-gb is "
        f"{gpu_memory_gb:g} GiB: {gib(over)} over; {fix}"
    )

