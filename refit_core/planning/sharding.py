"""Which slice of each parameter each rank of a layout holds: the one function nothing re-derives.

A rank's shard of a parameter is a list of `Piece`s along the parameter's split dimension: a
global index range and where it sits in the rank's local tensor. Column-parallel weights hold one
piece, SwiGLU fc1 two (their part of the gate and of the up half), replicated weights one piece
covering the whole dimension.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout
from refit_core.planning.model import Inventory, ModelSpec, ParamSpec


@dataclass(frozen=True)
class Piece:
    """Global indices [start, start+length) of the split dimension, at `local_start` locally."""

    start: int
    length: int
    local_start: int

    @property
    def stop(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class ShardGroup:
    """Pieces held identically by several local ranks (replicas of one shard)."""

    pieces: tuple[Piece, ...]
    holders: tuple[int, ...]


def check_divisible(spec: ModelSpec, inv: Inventory, layout: ParallelLayout, side: str) -> None:
    """Raise a ConfigError naming the flag whose size the layout does not divide."""
    tp_flag = "--tensor-model-parallel-size" if side == "source" else "--rl-inference-tensor-model-parallel-size"
    ep_flag = "--expert-model-parallel-size" if side == "source" else "--rl-inference-expert-model-parallel-size"
    pp_flag = "--pipeline-model-parallel-size" if side == "source" else "--rl-inference-pipeline-model-parallel-size"
    tp, ep, pp = layout.tp, layout.ep, layout.pp

    def need(value: int, by: int, what: str, flag: str) -> None:
        if value % by:
            raise ConfigError(
                f"{side}: {what} {value} is not divisible by {flag} {by}: choose sizes that divide"
            )

    if layout.first_stage_layers is None and layout.last_stage_layers is None:
        need(spec.num_layers, pp, "--num-layers", pp_flag)
    else:
        layout.stage_starts(spec.num_layers)
    need(spec.num_attention_heads, tp, "--num-attention-heads", tp_flag)
    if not spec.multi_latent_attention:
        need(spec.query_groups, tp, "--num-query-groups", tp_flag)
    if spec.is_moe:
        need(spec.num_experts or 0, ep, "--num-experts", ep_flag)
    elif ep > 1:
        raise ConfigError(f"{side}: {ep_flag} {ep} needs an MoE model: add --num-experts or set EP=1")
    for p in inv.params:
        if p.tp_dim is not None and p.shape[p.tp_dim] % (tp * p.tp_blocks):
            what = {"linear_fc1": "ffn size", "embedding": "vocab size", "output_layer": "vocab size"}
            label = next((v for k, v in what.items() if k in p.name), "dimension")
            raise ConfigError(
                f"{side}: {p.name} {label} {p.shape[p.tp_dim] // p.tp_blocks} is not divisible by {tp_flag} {tp}: "
                "choose sizes that divide"
            )


def stage_of(param: ParamSpec, layout: ParallelLayout, num_layers: int) -> int:
    """The pipeline stage holding `param`: layers split evenly, embedding first, head last."""
    if param.layer is not None:
        if layout.pp == 1:
            return 0
        return bisect.bisect_right(_stage_starts(layout, num_layers), param.layer) - 1
    return 0 if param.stage == "first" else layout.pp - 1


@functools.lru_cache(maxsize=256)
def _stage_starts(layout: ParallelLayout, num_layers: int) -> tuple[int, ...]:
    return layout.stage_starts(num_layers)


def local_shape(param: ParamSpec, layout: ParallelLayout) -> tuple[int, ...]:
    if param.tp_dim is None or param.expert is not None:
        return param.shape
    shape = list(param.shape)
    shape[param.tp_dim] //= layout.tp
    return tuple(shape)


def tp_pieces(param: ParamSpec, tp: int, tp_rank: int) -> tuple[Piece, ...]:
    """The pieces TP rank `tp_rank` of `tp` holds (whole dimension when not TP-split)."""
    n = param.shape[param.split_dim]
    if param.tp_dim is None or param.expert is not None:
        return (Piece(0, n, 0),)
    block = n // param.tp_blocks
    chunk = block // tp
    if tp == 1:  # the blocks are adjacent both globally and locally: one piece
        return (Piece(0, n, 0),)
    return tuple(Piece(b * block + tp_rank * chunk, chunk, b * chunk) for b in range(param.tp_blocks))


def shard_groups(param: ParamSpec, layout: ParallelLayout, num_layers: int, num_experts: int | None) -> list[ShardGroup]:
    """Every distinct shard of `param` in `layout`, with the local ranks holding it."""
    stage = stage_of(param, layout, num_layers)
    base = stage * layout.stage_size
    if param.expert is not None:
        per_rank = (num_experts or 1) // layout.ep
        owner = param.expert // per_rank
        return [ShardGroup(tp_pieces(param, 1, 0), _every(base + owner, base + layout.stage_size, layout.ep))]
    if param.tp_dim is None:
        return [ShardGroup(tp_pieces(param, 1, 0), _every(base, base + layout.stage_size, 1))]
    return [ShardGroup(tp_pieces(param, layout.tp, t), _every(base + t, base + layout.stage_size, layout.tp))
            for t in range(layout.tp)]


@functools.lru_cache(maxsize=4096)
def _every(start: int, stop: int, step: int) -> tuple[int, ...]:
    """The ranks start, start+step, ... below stop: a shard's holders, made in time linear in their number
    (not by scanning the stage: that made planning quadratic in the rank count) and shared, not rebuilt,
    by every parameter with the same holders."""
    return tuple(range(start, stop, step))


def rank_pieces(param: ParamSpec, layout: ParallelLayout, local: int, num_layers: int,
                num_experts: int | None) -> tuple[Piece, ...]:
    """The pieces local rank `local` holds of `param` (empty when it holds none)."""
    for g in shard_groups(param, layout, num_layers, num_experts):
        if local in g.holders:
            return g.pieces
    return ()
