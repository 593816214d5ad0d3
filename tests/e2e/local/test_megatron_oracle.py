"""Megatron-Core as the oracle: refitctl's shards are Megatron-Core's, and its refit delivers what
Megatron-Core's own refit (`megatron.core.resharding.swap_model_weights`) delivers, bit for bit.

Real Megatron-Core 0.16.1 MoE GPT models (local spec, bf16, built on CPU) on refitctl's rank
layout, one gloo process per rank (refit_core/peers/megatron_build.py). Per case and rank:
1. placement: every parameter's name, global shape and held global slice from Megatron's
   `sharded_state_dict()` equals refitctl's inventory and sharding for that rank;
2. refit: sources filled with refitctl's deterministic values by global position, destinations
   poisoned (NaN), Megatron-Core's `swap_model_weights(src, dst, gloo)` run as shipped, then with
   refit_core/peers/megatron_patch.py's fix; every destination parameter compared bitwise with refitctl's
   expected shard. What Megatron-Core as shipped does is asserted exactly (it fails, or it writes
   wrong bytes) so a new release that changes it shows up here.
Skipped when megatron-core (the `megatron` extra) is not installed.
"""

from __future__ import annotations

import time

import pytest

from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

mb = pytest.importorskip("refit_core.peers.megatron_build")
if mb.megatron_core() is None:
    pytest.skip("megatron-core not installed (pip install 'refitctl[megatron]')", allow_module_level=True)

from refit_core.peers import megatron_patch  # noqa: E402

# Tiny, but with every kind of weight: GQA (8 heads, 4 query groups), MoE with a shared expert,
# learned positions, LayerNorm with bias, a vocabulary (1000) that Megatron pads.
BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=64,
            num_experts=4, moe_shared_expert_intermediate_size=32, seq_length=16, vocab_size=1000,
            disable_bias_linear=True)


def case(src: ParallelLayout, dst: ParallelLayout, mode: str = "collocated", **model: object) -> RunConfig:
    cfg = RunConfig.of("megatron-oracle", ModelSpec(**{**BASE, **model}), src, dst, RefitMode(mode), method="gloo",
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
    res = mb.run_ranks(cfg.hardware.gpus, oracle_rank, cfg)
    print(f"{cfg.layouts.source.describe()} -> {cfg.layouts.destination.describe()} {cfg.layouts.mode.value}, "
          f"{cfg.hardware.gpus} ranks: {time.perf_counter() - t:.1f} s")
    for r in res:
        assert r["placement"] == [], "\n".join(r["placement"])
        err, wrong = r["patched"]
        assert r["patched_report"].patched
        assert err is None and wrong == {}, (err, wrong)
    return res


def shipped(res: list[dict]) -> list[tuple]:
    return [r["shipped"] for r in res]


def expert_params_on(cfg: RunConfig, rank: int) -> set[str]:
    """refitctl names of the routed-expert parameters destination rank `rank` holds."""
    from refit_core.planning.storage import rank_storage

    inv = cfg.inventory()
    place = cfg.world().destination
    st = rank_storage(inv, place.layout, place.local(rank))
    return {inv.params[s.param].name for s in st.slots if inv.params[s.param].expert is not None}


def wrong_names(res: list[dict]) -> list[set[str]]:
    out = []
    for err, wrong in shipped(res):
        assert err is None
        out.append(set(wrong))
    return out


NORMS_FP32 = ("input_layernorm.", "pre_mlp_layernorm.", "final_layernorm.", "position_embeddings.")


def test_tp_change_4_to_2_swiglu_gqa_untied_padded_vocab() -> None:
    cfg = case(ParallelLayout(tp=4), ParallelLayout(tp=2), swiglu=True, untie_embeddings_and_output_weights=True)
    assert cfg.inventory().vocab == 1024  # 1000 padded to 128 x lcm(4, 2)
    res = run(cfg)
    # as shipped: expert linears of an EP=1 source are paired with the dense TP group
    assert shipped(res) == [(
        "Cannot build TP descriptor for decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight dim0: "
        "src_world*src_local=4*128 != 2*128. This usually means the param is marked TP but is effectively "
        "replicated on that dim or partition_dim/metadata is inconsistent between source and destination.",
        None)] * 4
    # torch norms and the position embedding stay fp32 under bf16 parameters; everything else is bf16
    for r in res:
        assert r["fp32"] and all(any(k in n for k in NORMS_FP32) for n in r["fp32"])


def test_ep_change_2_to_1_non_collocated() -> None:
    cfg = case(ParallelLayout(ep=2), ParallelLayout(ep=1), mode="non-collocated")
    res = run(cfg)  # rank 2 holds only the destination: a parameter-less stub stands in for its source
    assert shipped(res) == [("Destination parameter 'decoder.layers.0.mlp.experts.local_experts.2.linear_fc1.weight' "
                             "on rank 2 not found in source model.", None)] * 3


def test_ep_change_1_to_2_shipped_writes_other_experts() -> None:
    cfg = case(ParallelLayout(ep=1), ParallelLayout(ep=2))
    res = run(cfg)
    # as shipped it finishes, but rank 1 (experts 2, 3) receives experts 0, 1: only verification sees it
    assert wrong_names(res) == [set(), expert_params_on(cfg, 1)]
    assert len(expert_params_on(cfg, 1)) == 2 * 2 * 2  # layers x experts x (fc1, fc2)


def test_collocated_1_tp_ep_swap() -> None:
    """collocated-1's layouts at full rank count: TP4/EP2 -> TP2/EP4, 8 processes."""
    cfg = case(ParallelLayout(tp=4, ep=2), ParallelLayout(tp=2, ep=4), swiglu=True)
    res = run(cfg)
    dst = cfg.world().destination
    assert wrong_names(res) == [expert_params_on(cfg, r) if dst.layout.coords(dst.local(r)).ep else set()
                                for r in range(8)]


def test_pipeline_parallel_source() -> None:
    cfg = case(ParallelLayout(ep=2, pp=2), ParallelLayout(tp=2, ep=2), swiglu=True,
               untie_embeddings_and_output_weights=True)
    res = run(cfg)
    # as shipped even EP2 -> EP2 mixes experts: both source EP ranks call theirs local_experts.0/1
    assert wrong_names(res) == [set(), expert_params_on(cfg, 1), set(), expert_params_on(cfg, 3)]


def test_tied_embeddings_with_pp_cannot_be_built_on_cpu() -> None:
    from refit_core.errors import ConfigError

    cfg = case(ParallelLayout(pp=2), ParallelLayout())
    with pytest.raises(ConfigError, match="tied embeddings with PP > 1: Megatron-Core moves"):
        mb.transformer_config(cfg.model, cfg.layouts.source)


def _placement_against(built: RunConfig, claimed: RunConfig) -> list[str]:
    models = mb.build_models(built)
    world = claimed.world()
    out = []
    for place, m in ((world.source, models.source), (world.destination, models.destination)):
        if m is not None:
            out += mb.placement_mismatches(claimed, place, m)
    return out


def test_placement_check_sees_a_wrong_split() -> None:
    """The placement oracle can fail: models built with SwiGLU, checked against a spec without it."""
    built = case(ParallelLayout(tp=2), ParallelLayout(ep=2), swiglu=True)
    claimed = case(ParallelLayout(tp=2), ParallelLayout(ep=2))
    res = mb.run_ranks(2, _placement_against, built, claimed)
    assert ("rank 0: decoder.layers.0.mlp.shared_experts.linear_fc1.weight: global shape (64, 64) in Megatron, "
            "(32, 64) in refitctl") in res[0]
