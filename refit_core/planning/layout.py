"""Where each model lives: parallel degrees, rank coordinates, and the world's rank layout.

Rank order inside a model follows Megatron-Core's default order `tp-cp-ep-dp-pp` with MoE
parallel folding: two decompositions of the same ranks, one for dense layers
(TP fastest, then DP, then PP) and one for expert layers (ETP=1 fastest, then EP, then expert-DP,
then PP). So for local index i inside a model: stage = i // (TP*EP), and inside the stage
tp_rank = i % TP, ep_rank = i % EP. Dense weights are replicated over the EP ranks (EP is carved
out of data parallel); an expert's weights are replicated over the TP ranks (ETP=1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

from refit_core.errors import ConfigError


MAX_WORLD = 65536
"""The most ranks a world (or one model's layout) may have; beyond it a value is a typo, not a cluster."""


class RefitMode(str, Enum):
    NON_COLLOCATED = "non-collocated"
    COLLOCATED = "collocated"


@dataclass(frozen=True)
class ParallelLayout:
    """Parallel degrees of one model. The model occupies TP*EP*PP ranks (the seed's arithmetic)."""

    tp: int = 1
    ep: int = 1
    pp: int = 1
    etp: int = 1
    first_stage_layers: int | None = None  # Megatron's --decoder-first-pipeline-num-layers
    last_stage_layers: int | None = None  # Megatron's --decoder-last-pipeline-num-layers

    def __post_init__(self) -> None:
        for name in ("tp", "ep", "pp", "etp"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_WORLD:
                raise ConfigError(f"{name.upper()} must be an integer 1..{MAX_WORLD}, got {v!r}")
        if self.size > MAX_WORLD:
            raise ConfigError(f"TP*EP*PP = {self.tp}*{self.ep}*{self.pp} = {self.size:,} ranks, more than "
                              f"{MAX_WORLD:,}: check the parallel sizes")
        for name in ("first_stage_layers", "last_stage_layers"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1 or self.pp == 1):
                flag = "--decoder-" + name.split("_")[0] + "-pipeline-num-layers"
                raise ConfigError(f"{flag} {v!r} needs PP > 1 and at least one layer")

    def stage_starts(self, num_layers: int) -> tuple[int, ...]:
        """First layer of each pipeline stage: given first/last stage sizes, the rest split evenly."""
        if self.pp == 1:
            return (0,)
        first, last = self.first_stage_layers, self.last_stage_layers
        middle = self.pp - (first is not None) - (last is not None)
        rest = num_layers - (first or 0) - (last or 0)
        if rest < 0 or (middle and (rest % middle or rest == 0)) or (not middle and rest):
            raise ConfigError(
                f"--num-layers {num_layers} cannot be split over PP={self.pp}"
                + (f" with first stage {first}" if first else "") + (f" and last stage {last}" if last else "")
                + ": choose sizes that divide (or --decoder-first/last-pipeline-num-layers that add up)"
            )
        sizes = ([first] if first is not None else []) + [rest // middle if middle else 0] * middle \
            + ([last] if last is not None else [])
        return tuple(itertools.accumulate(sizes[:-1], initial=0))

    @property
    def size(self) -> int:
        return self.tp * self.ep * self.pp

    @property
    def stage_size(self) -> int:
        return self.tp * self.ep

    def coords(self, local: int) -> "RankCoords":
        if not 0 <= local < self.size:
            raise ValueError(f"local rank {local} outside 0..{self.size - 1}")
        inner = local % self.stage_size
        return RankCoords(
            tp=inner % self.tp, dp=inner // self.tp, ep=inner % self.ep, edp=inner // self.ep,
            pp=local // self.stage_size,
        )

    def describe(self) -> str:
        return f"TP={self.tp}, PP={self.pp}, EP={self.ep}"


@dataclass(frozen=True)
class RankCoords:
    """A rank's coordinates in both decompositions (dense: tp/dp/pp, expert: ep/edp/pp)."""

    tp: int
    dp: int
    ep: int
    edp: int
    pp: int


@dataclass(frozen=True)
class Placement:
    """A model laid on a contiguous range of global ranks."""

    layout: ParallelLayout
    first_rank: int

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + self.layout.size)

    def local(self, rank: int) -> int | None:
        return rank - self.first_rank if rank in self.ranks else None


@dataclass(frozen=True)
class WorldLayout:
    """Source, destination and idle ranks of one refit job."""

    mode: RefitMode
    world_size: int
    source: Placement
    destination: Placement

    @property
    def gpus_used(self) -> int:
        return max(self.source.ranks.stop, self.destination.ranks.stop)

    @property
    def idle_ranks(self) -> range:
        return range(self.gpus_used, self.world_size)

    def role(self, rank: int) -> str:
        roles = [n for n, p in (("source", self.source), ("destination", self.destination)) if rank in p.ranks]
        return "+".join(roles) if roles else "idle"

    def describe(self) -> str:
        """The seed's 'Understanding Output' lines."""
        lines = [
            f"World size: {self.world_size} (using {self.gpus_used} GPUs)",
            f"Source ranks: {_span(self.source.ranks)} ({self.source.layout.describe()})",
            f"Destination ranks: {_span(self.destination.ranks)} ({self.destination.layout.describe()})",
        ]
        if len(self.idle_ranks):
            lines.append(f"Idle ranks: {_span(self.idle_ranks)} (not participating)")
        return "\n".join(lines)


def _span(r: range) -> str:
    return str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}"


def gpus_needed(mode: RefitMode, source: ParallelLayout, destination: ParallelLayout) -> int:
    if mode is RefitMode.NON_COLLOCATED:
        return source.size + destination.size
    return max(source.size, destination.size)


def world_layout(
    mode: RefitMode | str,
    source: ParallelLayout,
    destination: ParallelLayout,
    world_size: int | None = None,
) -> WorldLayout:
    """Lay both models on ranks; `world_size` defaults to exactly the GPUs needed.

    Raises ConfigError with the seed's arithmetic when the world is too small.
    """
    mode = RefitMode(mode)
    need = gpus_needed(mode, source, destination)
    world = need if world_size is None else world_size
    if need > world:
        if mode is RefitMode.NON_COLLOCATED:
            how = f"{source.size} + {destination.size}"
            fix = "shrink a layout's TP*EP*PP, use --refit-mode collocated, or allocate more GPUs"
        else:
            how = f"max({source.size}, {destination.size})"
            fix = "shrink a layout's TP*EP*PP or allocate more GPUs"
        raise ConfigError(f"needs {need} GPUs ({how}) but only {world} available: {fix}")
    dst_first = source.size if mode is RefitMode.NON_COLLOCATED else 0
    return WorldLayout(mode, world, Placement(source, 0), Placement(destination, dst_first))
