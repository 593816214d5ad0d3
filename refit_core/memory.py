"""Does the refit fit in GPU memory: per GPU, the source shard, the destination shard and the buffers.

A GPU holds what its role gives it: a source rank its shard of the training layout, a destination
rank its shard of the inference layout (a collocated GPU both), plus one staging bucket of
`bucket_bytes` per role (a send bucket as a source, a receive bucket as a destination). Shard sizes
come from `sharding.shard_groups`, the one function that says which slice each rank holds, so the
memory figure and the transfer plan can never disagree. Weights only: optimizer state, activations,
KV cache, the CUDA context and the communication libraries' own buffers are not counted, so a config
that fits here is necessary, not sufficient.
"""

from __future__ import annotations

from dataclasses import dataclass

from refit_core.errors import ConfigError
from refit_core.layout import ParallelLayout, WorldLayout
from refit_core.model import Inventory
from refit_core.sharding import shard_groups

GIB = 1 << 30


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
        return max(self.per_rank, key=lambda m: (m.total, -m.rank))

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


def shard_bytes(inv: Inventory, layout: ParallelLayout) -> list[int]:
    """Bytes each local rank of `layout` holds of `inv` (index = local rank)."""
    spec = inv.spec
    held = [0] * layout.size
    for p in inv.params:
        unit = p.nbytes // p.shape[p.split_dim]
        for g in shard_groups(p, layout, spec.num_layers, spec.num_experts):
            b = sum(pc.length for pc in g.pieces) * unit
            for h in g.holders:
                held[h] += b
    return held


def memory_fit(inv: Inventory, world: WorldLayout, bucket_bytes: int, limit_bytes: int) -> MemoryFit:
    """Per-GPU bytes of a refit of `inv` on `world`, against `limit_bytes` per GPU."""
    src = shard_bytes(inv, world.source.layout)
    dst = shard_bytes(inv, world.destination.layout)
    out = []
    for r in range(world.world_size):
        sl, dl = world.source.local(r), world.destination.local(r)
        roles = (sl is not None) + (dl is not None)
        out.append(RankMemory(
            rank=r, role=world.role(r),
            source_bytes=src[sl] if sl is not None else 0,
            destination_bytes=dst[dl] if dl is not None else 0,
            buffer_bytes=roles * bucket_bytes,
        ))
    return MemoryFit(tuple(out), limit_bytes)


def check_memory(fit: MemoryFit, gpu_memory_gb: float) -> None:
    """Raise a one-line ConfigError saying how far over the busiest GPU is and what to change."""
    if fit.fits:
        return
    m = fit.busiest
    over = -fit.headroom_bytes
    if m.source_bytes >= m.destination_bytes:
        ep_flag = "--expert-model-parallel-size or --pipeline-model-parallel-size"
    else:
        ep_flag = "--rl-inference-expert-model-parallel-size"
    fixes = [f"use more GPUs with a larger {ep_flag} (fewer experts per GPU)"]
    if m.buffer_bytes >= over:
        fixes.append("or a smaller --refit-bucket-size")
    else:
        fixes.append("a smaller --refit-bucket-size saves at most " + _gib(m.buffer_bytes))
    raise ConfigError(
        f"GPU {m.rank} ({m.role}) needs {_gib(m.total)} (source shard {_gib(m.source_bytes)} + destination shard "
        f"{_gib(m.destination_bytes)} + refit buffers {_gib(m.buffer_bytes)}) but --gpu-memory-gb is "
        f"{gpu_memory_gb:g} GiB: {_gib(over)} over; " + ", ".join(fixes)
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
