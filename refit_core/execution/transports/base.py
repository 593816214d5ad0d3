"""The transport interface: prepare buffers once, run one refit iteration, close.

A transport receives a `RankContext` (this rank's plan share and shard layouts) and owns the
rank's buffers. `iteration()` performs one complete refit on this rank and returns its timing;
the engine around it poisons, synchronises, verifies and records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from refit_core.config import RunConfig
from refit_core.planning.devices import DeviceMap
from refit_core.planning.plan import Plan, RankPlan
from refit_core.planning.storage import Storage


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
    source_buffer: torch.Tensor | None = None  # the caller's bytes holding `source` (None: the transport allocates)
    destination_buffer: torch.Tensor | None = None  # the same for `destination` (refit_core/library)
    layouts: Callable[[str, int], Storage | None] | None = None  # every rank's storages (None: derived from the plan)
    devices: DeviceMap | None = None  # each rank's GPU as placed before launch (None: not placed)


@dataclass
class IterationStats:
    time_ms: float
    phases_ms: dict[str, float] = field(default_factory=dict)
    launches: int = 0


ShardPart = tuple[torch.Tensor, Storage]
"""Some of a rank's shards of one role: a byte buffer and the slots laid out in it."""


class Transport(Protocol):
    name: str
    source_parts: list[ShardPart]  # where this rank's source shards live (empty: not a source)
    destination_parts: list[ShardPart]  # where its destination shards live (empty: not a destination)
    extra_bytes: int  # device memory beyond the shards (staging, descriptors), as allocated
    measured_extra_bytes: int | None  # the same, measured on the device where the transport can
    info: dict[str, object]  # how the transport set itself up (for results: placement, rounds, ...)

    def prepare(self, ctx: RankContext) -> None: ...

    def iteration(self) -> IterationStats: ...

    def close(self) -> None: ...


class TransportReport:
    """What every transport reports, at its values before `prepare()`: where the shards live, the
    memory it adds, and how it set itself up. Transports inherit it instead of repeating it."""

    def __init__(self) -> None:
        self.source_parts: list[ShardPart] = []
        self.destination_parts: list[ShardPart] = []
        self.extra_bytes = 0
        self.measured_extra_bytes: int | None = None
        self.info: dict[str, object] = {}


def whole(buf: torch.Tensor | None, storage: Storage | None) -> list[ShardPart]:
    """One part holding all of `storage`, or none for a role the rank does not have."""
    return [(buf, storage)] if buf is not None and storage is not None else []


def shard_buffer(ctx: RankContext, role: str) -> torch.Tensor | None:
    """The byte buffer of this rank's `role` ("source" or "destination") shards: the caller's
    (refit_core/library: a model's parameters, in place) where given, else a new one; None without the role."""
    storage = ctx.source if role == "source" else ctx.destination
    given = ctx.source_buffer if role == "source" else ctx.destination_buffer
    if storage is None:
        return None
    return given if given is not None else allocate(storage.nbytes, ctx.device)


def allocate(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
