"""The transport interface: prepare buffers once, run one refit iteration, close.

A transport receives a `RankContext` (this rank's plan share and shard layouts) and owns the
rank's buffers. `iteration()` performs one complete refit on this rank and returns its timing;
the engine around it poisons, synchronises, verifies and records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from refit_core.config import RunConfig
from refit_core.plan import Plan, RankPlan
from refit_core.storage import Storage


@dataclass
class RankContext:
    config: RunConfig
    plan: Plan
    rank: int
    world_size: int
    device: torch.device
    rank_plan: RankPlan
    source: Storage | None  # this rank's source shards (None: not a source rank)
    destination: Storage | None  # this rank's destination shards (None: not a destination)
    active_group: object = None  # torch.distributed group of source + destination ranks


@dataclass
class IterationStats:
    time_ms: float
    phases_ms: dict[str, float] = field(default_factory=dict)
    launches: int = 0


class Transport(Protocol):
    name: str
    src_buf: torch.Tensor | None
    dst_buf: torch.Tensor | None
    extra_bytes: int  # device memory beyond the shards (staging, descriptors)

    def prepare(self, ctx: RankContext) -> None: ...

    def iteration(self) -> IterationStats: ...

    def close(self) -> None: ...


def allocate(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
