"""Megatron-Core's `swap_model_weights`, done by refitctl: change one import in an RL loop.

    from refit_core.megatron import swap_model_weights   # was: from megatron.core.resharding import ...
    swap_model_weights(train_model, inference_model, "gloo")   # or "nccl"; a model or a list of chunks

The first call on a pair of models reads their description (refit_core/megatron/describe.py),
plans, and binds both models' parameters to a `refit_core.library.Refit` (names through
refit_core/peers/megatron_names.py); the refit is cached on the target model, so every later call
only moves the bytes (and checks them, unless `verify=False`). Megatron-Core's own planner and
copy services are not used. What cannot be refit is refused in one line (ConfigError).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.library import Refit, RefitStats
from refit_core.planning.storage import Storage
from refit_core.planning.wire import shard_storage
from refit_core.library.tensors import at_offsets
from refit_core.megatron.describe import Side, run_config, unwrap
from refit_core.planning.layout import Placement
from refit_core.planning.plan import Plan

log = logging.getLogger(__name__)
_CACHE_ATTR = "_refitctl_refit"
_no_target: dict[tuple[int, int, str], Refit] = {}  # refits of ranks that hold no target model


def swap_model_weights(src_model: Any, target_model: Any, refit_method: Any = "nccl", *,
                       verify: bool = True) -> RefitStats:
    """Copy `src_model`'s weights into `target_model`, resharded; collective over the default group.

    `refit_method`: a refitctl method name that refits caller tensors ("gloo" on CPU, "nccl" on
    GPUs). Ranks holding no model of a role pass None (or a parameter-less stand-in)."""
    if not isinstance(refit_method, str):
        raise ConfigError(f"refit_method {type(refit_method).__name__}: refitctl takes a method name "
                          "('gloo' or 'nccl'), not a Megatron-Core CopyService")
    src, dst = unwrap(src_model), unwrap(target_model)
    key = (id(src), id(dst), refit_method)
    refit = getattr(dst, _CACHE_ATTR, None) if dst is not None else _no_target.get(key)
    if refit is None or refit.key != key:
        refit = build(src, dst, refit_method, verify)
        refit.key = key  # type: ignore[attr-defined]
        if dst is not None:
            setattr(dst, _CACHE_ATTR, refit)
        else:
            _no_target[key] = refit
    refit.verify = verify  # per call: the check can be switched off without planning again
    return refit()


def build(src: Any, dst: Any, method: str, verify: bool) -> Refit:
    """The Refit of `src` -> `dst` (unwrapped GPTModels or None) on this rank, collective.

    One collective before the transport is set up: the `describe` gather also carries where each
    rank's parameters sit when they live in one buffer, so every rank knows every buffer layout
    without a second gather (with verification off; on, `Refit.build` gathers rank 0's coverage check)."""
    import torch.distributed as dist

    t0 = time.perf_counter()
    cfg, sides = run_config(src, dst, method)
    world, rank = cfg.world(), dist.get_rank()
    source = named_shards(src, world.source, rank, cfg) if src is not None else None
    target = named_shards(dst, world.destination, rank, cfg) if dst is not None else None
    t1 = time.perf_counter()
    plan = cfg.plan()
    t2 = time.perf_counter()
    refit = Refit.build(cfg, source, target, verify=verify, plan=plan, layouts=peer_layouts(cfg, plan, sides))
    phases = dict(refit.build_phases_ms)
    phases["plan"] = round(phases.get("plan", 0.0) + (t2 - t1) * 1e3, 3)
    refit.build_phases_ms = {"describe": round((t1 - t0) * 1e3, 3), **phases}
    refit.build_ms = sum(refit.build_phases_ms.values())
    return refit


def _offsets(place: Placement, rank: int, cfg: RunConfig) -> tuple[int, int]:
    """(first layer, first expert) of rank `rank`'s part of the model on `place`."""
    spec = cfg.model
    coords = place.layout.coords(place.local(rank))
    return (place.layout.stage_starts(spec.num_layers)[coords.pp],
            coords.ep * ((spec.num_experts or 1) // place.layout.ep))


def peer_layouts(cfg: RunConfig, plan: Plan, sides: list[tuple[Side | None, Side | None]]
                 ) -> Callable[[str, int], Storage | None]:
    """Every rank's shard layout of each role: refitctl's own where its parameters are adopted, the
    offsets it reported where they already live in one buffer (computed on demand, cached)."""
    from refit_core.peers.megatron_names import megatron_to_refitctl

    world, inv, cache = cfg.world(), plan.inventory, {}

    def layout(role: str, r: int) -> Storage | None:
        if (role, r) not in cache:
            template = shard_storage(plan, role, r)
            side = sides[r][0 if role == "source" else 1]
            if template is None or side is None or side.buffer is None:
                cache[(role, r)] = template
            else:
                layer, expert = _offsets(world.source if role == "source" else world.destination, r, cfg)
                at = {inv.index[megatron_to_refitctl(n, layer_offset=layer, expert_offset=expert,
                                                     is_moe_layer=cfg.model.is_moe_layer)]: off
                      for n, off in side.buffer[0]}
                cache[(role, r)] = at_offsets(template, at, side.buffer[1])
        return cache[(role, r)]

    return layout


def named_shards(model: Any, place: Placement, rank: int, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """{refitctl name: parameter} of `model` on this rank (local layer / expert indices made global)."""
    from refit_core.peers.megatron_names import megatron_to_refitctl

    layer_offset, expert_offset = _offsets(place, rank, cfg)
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        rname = megatron_to_refitctl(name, layer_offset=layer_offset, expert_offset=expert_offset,
                                     is_moe_layer=cfg.model.is_moe_layer)
        if rname in out:
            raise ConfigError(f"rank {rank}: {name} and another parameter are both {rname}: tied copies are not "
                              "refit; untie the embeddings and output weights")
        out[rname] = p
    return out


__all__ = ["swap_model_weights", "build", "named_shards"]
