"""Megatron-Core as the oracle: refitctl's shards are Megatron-Core's, and its refit delivers what
Megatron-Core's own refit (`megatron.core.resharding.swap_model_weights`) delivers, bit for bit.

Real Megatron-Core 0.16.1 MoE GPT models (local spec, bf16, built on CPU) on refitctl's rank
layout, one gloo process per rank (refit_core/peers/megatron_build.py). Per case and rank:
1. placement: every parameter's name, global shape and held global slice from Megatron's
   `sharded_state_dict()` equals refitctl's inventory and sharding for that rank;
2. refit: sources filled with refitctl's deterministic values by global position, destinations
   poisoned (NaN), Megatron-Core's `swap_model_weights(src, dst, gloo)` run as shipped, then with
   refit_core/megatron_patch.py's fix; every destination parameter compared bitwise with refitctl's
   expected shard. What Megatron-Core as shipped does is asserted exactly (it fails, or it writes
   wrong bytes) so a new release that changes it shows up here.
Skipped when megatron-core (the `megatron` extra) is not installed.
"""

from __future__ import annotations

import time

import pytest

from refit_core.config import RunConfig
from refit_core.layout import ParallelLayout, RefitMode
from refit_core.model import ModelSpec

mb = pytest.importorskip("refit_core.peers.megatron_build")
if mb.megatron_core() is None:
    pytest.skip("megatron-core not installed (pip install 'refitctl[megatron]')", allow_module_level=True)

from refit_core import megatron_patch  # noqa: E402

# Tiny, but with every kind of weight: GQA (8 heads, 4 query groups), MoE with a shared expert,
# learned positions, LayerNorm with bias, a vocabulary (1000) that Megatron pads.
BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=64,
            num_experts=4, moe_shared_expert_intermediate_size=32, seq_length=16, vocab_size=1000,
            disable_bias_linear=True)


def case(src: ParallelLayout, dst: ParallelLayout, mode: str = "collocated", **model: object) -> RunConfig:
    cfg = RunConfig("megatron-oracle", ModelSpec(**{**BASE, **model}), src, dst, RefitMode(mode), method="gloo",
                    iterations=1, gpus=1 << 10)
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    cfg.validate()
    return cfg


def oracle_rank(cfg: RunConfig) -> dict:
    """One rank's part: placement checks, Megatron's refit as shipped, then patched."""
    models = mb.build_models(cfg)
    world = cfg.world()
    out: dict = {"placement": []}
    for place, m in ((world.source, models.source), (world.destination, models.destination)):
        if m is not None:
            out["placement"] += mb.placement_mismatches(cfg, place, m)
            out.setdefault("fp32", set()).update(
                n for n, p in m.named_parameters() if str(p.dtype) == "torch.float32")
    service = mb.cpu_gloo_service()
    mb.fill_source(cfg, models)
    for label, patch in (("shipped", megatron_patch.unpatch_expert_metadata),
                         ("patched", megatron_patch.patch_expert_metadata)):
        out[label + "_report"] = patch()
        models.destination_arg.__dict__.pop("_cached_reshard_plan", None)
        mb.poison_destination(models)
        err = mb.plan_or_error(models, cfg.model.num_experts)
        wrong = None
        if err is None:
            mb.swap(models, service)  # plans on the first call, cached for the next
            mb.poison_destination(models)
            mb.swap(models, service)
            wrong = mb.destination_mismatches(cfg, models)
        out[label] = (err, wrong)
    megatron_patch.unpatch_expert_metadata()
    return out


def run(cfg: RunConfig) -> list[dict]:
    t = time.perf_counter()
    res = mb.run_ranks(cfg.gpus, oracle_rank, cfg)
    print(f"{cfg.source.describe()} -> {cfg.destination.describe()} {cfg.mode.value}, "
          f"{cfg.gpus} ranks: {time.perf_counter() - t:.1f} s")
    for r in res:
        assert r["placement"] == [], "\n".join(r["placement"])
        err, wrong = r["patched"]
        assert r["patched_report"].patched
        assert err is None and wrong == {}, (err, wrong)
    return res


def shipped(res: list[dict]) -> list[tuple]:
    return [r["shipped"] for r in res]
