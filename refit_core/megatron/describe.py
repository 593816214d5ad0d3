"""What refitctl needs to know about two Megatron-Core models: one RunConfig, read from the models.

Each rank describes the models it holds (the TransformerConfig, the GPTModel's vocabulary,
positions and tying, the sizes of its process groups and its own coordinates in them); one
all_gather_object gives every rank the whole picture, ranks without a model included. The two
models must be the same network, laid on refitctl's rank order (source ranks first; destination
ranks the same ones, collocated, or the next ones; inside a model tp fastest, then ep, then the
stage, as Megatron-LM's default grid orders them). Anything else is refused in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, Placement, RefitMode
from refit_core.library.config import library_settings
from refit_core.library.tensors import shared_offsets
from refit_core.planning.model import ModelSpec


@dataclass(frozen=True)
class Side:
    """One model as this rank holds it."""

    spec: tuple[tuple[str, Any], ...]  # ModelSpec fields, sorted
    layout: ParallelLayout
    coords: tuple[int, int, int]  # this rank's (tp, ep, pp) in the model's groups
    buffer: tuple[tuple[tuple[str, int], ...], int] | None = None
    """((parameter name, byte offset), ...), storage bytes) when the parameters are views of one
    buffer (DDP's `param_data`): where they sit, which the peers' transports need; None otherwise."""


def unwrap(model: Any) -> Any:
    """The GPTModel inside a list of chunks and DDP / Float16Module wrappers; None for no model here.

    A module without parameters (a stand-in Megatron-Core 0.16.1 needs on ranks without the role)
    counts as no model."""
    if isinstance(model, (list, tuple)):
        if len(model) > 1:
            raise ConfigError(f"{len(model)} model chunks: virtual pipeline stages are not refit yet; pass one "
                              "chunk per rank (--num-layers-per-virtual-pipeline-stage unset)")
        model = model[0] if model else None
    while model is not None and hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if model is None or next(iter(model.parameters()), None) is None:
        return None
    return model


def _spec(model: Any) -> dict[str, Any]:
    c = model.config
    if getattr(c, "multi_latent_attention", False):
        raise ConfigError("multi-latent attention models are not refit through refit_core.megatron yet: "
                          "GQA attention only")
    if c.num_moe_experts and getattr(c, "moe_layer_freq", 1) != 1:
        raise ConfigError(f"moe_layer_freq {c.moe_layer_freq!r}: refit_core.megatron refits models with MoE in "
                          "every layer (or none)")
    if getattr(c, "moe_router_enable_expert_bias", False):
        raise ConfigError("moe_router_enable_expert_bias: the router's expert bias is a buffer Megatron-Core does "
                          "not list as a parameter; refit_core.megatron does not move it yet")
    return dict(num_layers=c.num_layers, hidden_size=c.hidden_size, num_attention_heads=c.num_attention_heads,
                num_query_groups=c.num_query_groups, kv_channels=c.kv_channels, ffn_hidden_size=c.ffn_hidden_size,
                moe_ffn_hidden_size=c.moe_ffn_hidden_size if c.num_moe_experts else None,
                num_experts=c.num_moe_experts, moe_router_topk=c.moe_router_topk or 2,
                moe_shared_expert_intermediate_size=c.moe_shared_expert_intermediate_size,
                disable_bias_linear=not c.add_bias_linear, swiglu=bool(c.gated_linear_unit),
                vocab_size=model.vocab_size, padded_vocab_size=model.vocab_size,
                untie_embeddings_and_output_weights=not model.share_embeddings_and_output_weights,
                position_embedding_type=model.position_embedding_type,
                max_position_embeddings=model.max_sequence_length, normalization=c.normalization,
                dtype=str(c.params_dtype).removeprefix("torch."))


def side(model: Any) -> Side | None:
    """This rank's description of `model` (None: no model of this role here)."""
    import torch.distributed as dist

    if model is None:
        return None
    pgc, c = model.pg_collection, model.config
    if c.expert_tensor_parallel_size not in (None, 1) and c.num_moe_experts:
        raise ConfigError(f"expert tensor parallel size {c.expert_tensor_parallel_size}: MoE refit needs 1")
    sizes = [dist.get_world_size(g) for g in (pgc.tp, pgc.ep, pgc.pp)]
    lay = ParallelLayout(tp=sizes[0], ep=sizes[1], pp=sizes[2],
                         first_stage_layers=c.num_layers_in_first_pipeline_stage,
                         last_stage_layers=c.num_layers_in_last_pipeline_stage)
    coords = tuple(dist.get_rank(g) for g in (pgc.tp, pgc.ep, pgc.pp))
    found = shared_offsets(dict(model.named_parameters()), c.params_dtype)
    buffer = (tuple(sorted(found[0].items())), found[1]) if found else None
    return Side(tuple(sorted(_spec(model).items())), lay, coords, buffer)  # type: ignore[arg-type]


def _one(sides: list[Side | None], role: str) -> tuple[Side, list[int]]:
    held = [(r, s) for r, s in enumerate(sides) if s is not None]
    if not held:
        raise ConfigError(f"no rank holds a {role} model: pass the model on the ranks that hold it")
    first = held[0][1]
    for r, s in held:
        if (s.spec, s.layout) != (first.spec, first.layout):
            raise ConfigError(f"rank {r}'s {role} model differs from rank {held[0][0]}'s: every rank must pass "
                              "chunks of the same model")
    return first, [r for r, _ in held]


def _check_ranks(place: Placement, ranks: list[int], sides: list[Side | None], role: str) -> None:
    want = list(range(place.first_rank, place.first_rank + place.layout.size))
    if ranks != want:
        raise ConfigError(f"the {role} model is on ranks {ranks[:8]}, refitctl lays it on {want[:8]}: source ranks "
                          "first, then the destination's (or the same ones, collocated)")
    for r in ranks:
        c = place.layout.coords(place.local(r))
        if sides[r].coords != (c.tp, c.ep, c.pp):  # type: ignore[union-attr]
            raise ConfigError(f"rank {r}: the {role} model's (tp, ep, pp) ranks are {sides[r].coords}, refitctl's "  # type: ignore[union-attr]
                              f"order gives {(c.tp, c.ep, c.pp)}: build the groups tp fastest, then ep, then pp")


def run_config(src: Any, dst: Any, method: str) -> tuple[RunConfig, list[tuple[Side | None, Side | None]]]:
    """The RunConfig of refitting `src` into `dst` (unwrapped models or None), and every rank's
    (source, target) descriptions; collective."""
    import torch.distributed as dist

    mine = (side(src), side(dst))
    every: list[tuple[Side | None, Side | None]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(every, mine)
    s, s_ranks = _one([e[0] for e in every], "source")
    d, d_ranks = _one([e[1] for e in every], "target")
    if s.spec != d.spec:
        diff = next(k for (k, v), (_, w) in zip(s.spec, d.spec) if v != w)
        raise ConfigError(f"source and target models differ in {diff}: a refit moves the weights of one network")
    mode = RefitMode.COLLOCATED if d_ranks[0] == s_ranks[0] else RefitMode.NON_COLLOCATED  # both from rank 0
    cfg = library_settings(RunConfig.of("megatron-swap", ModelSpec(**dict(s.spec)), s.layout, d.layout, mode,
                                     method=method, iterations=1, warmup=0, gpus=dist.get_world_size()))
    cfg.validate(gpu_memory=False)
    world = cfg.world()
    _check_ranks(world.source, s_ranks, [e[0] for e in every], "source")
    _check_ranks(world.destination, d_ranks, [e[1] for e in every], "target")
    return cfg, every
