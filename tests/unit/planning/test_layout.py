"""Exact rank layouts and errors for every row of the seed's tables and its pitfalls."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.configs import builtin_configs, resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, world_layout

SEED_LAYOUTS = {
    "config-1": ("World size: 8 (using 6 GPUs)\nSource ranks: 0-3 (TP=2, PP=1, EP=2)\n"
                 "Destination ranks: 4-5 (TP=2, PP=1, EP=1)\nIdle ranks: 6-7 (not participating)"),
    "config-2": ("World size: 8 (using 8 GPUs)\nSource ranks: 0-3 (TP=2, PP=1, EP=2)\n"
                 "Destination ranks: 4-7 (TP=2, PP=1, EP=2)"),
    "config-3": ("World size: 8 (using 6 GPUs)\nSource ranks: 0-3 (TP=4, PP=1, EP=1)\n"
                 "Destination ranks: 4-5 (TP=2, PP=1, EP=1)\nIdle ranks: 6-7 (not participating)"),
    "config-4": ("World size: 8 (using 3 GPUs)\nSource ranks: 0-1 (TP=2, PP=1, EP=1)\n"
                 "Destination ranks: 2 (TP=1, PP=1, EP=1)\nIdle ranks: 3-7 (not participating)"),
    "config-5": ("World size: 8 (using 8 GPUs)\nSource ranks: 0-3 (TP=4, PP=1, EP=1)\n"
                 "Destination ranks: 4-7 (TP=4, PP=1, EP=1)"),
    "config-6": ("World size: 8 (using 6 GPUs)\nSource ranks: 0-3 (TP=1, PP=1, EP=4)\n"
                 "Destination ranks: 4-5 (TP=1, PP=1, EP=2)\nIdle ranks: 6-7 (not participating)"),
    "collocated-1": ("World size: 8 (using 8 GPUs)\nSource ranks: 0-7 (TP=4, PP=1, EP=2)\n"
                     "Destination ranks: 0-7 (TP=2, PP=1, EP=4)"),
    "collocated-2": ("World size: 8 (using 8 GPUs)\nSource ranks: 0-7 (TP=8, PP=1, EP=1)\n"
                     "Destination ranks: 0-7 (TP=4, PP=1, EP=2)"),
    "collocated-3": ("World size: 8 (using 8 GPUs)\nSource ranks: 0-7 (TP=4, PP=1, EP=2)\n"
                     "Destination ranks: 0-3 (TP=4, PP=1, EP=1)"),
    "collocated-4": ("World size: 8 (using 4 GPUs)\nSource ranks: 0-3 (TP=2, PP=1, EP=2)\n"
                     "Destination ranks: 0-1 (TP=2, PP=1, EP=1)\nIdle ranks: 4-7 (not participating)"),
}


@pytest.mark.parametrize("name", sorted(SEED_LAYOUTS))
def test_seed_layout_printout(name: str) -> None:
    cfg = resolve(name)
    cfg.validate()
    assert cfg.world().describe() == SEED_LAYOUTS[name]


def test_registry_has_every_seed_row() -> None:
    names = set(builtin_configs())
    assert set(SEED_LAYOUTS) <= names


def test_pitfall_too_many_gpus_gives_seed_arithmetic() -> None:
    cfg = apply_overrides(resolve("config-1"), {
        "tensor_model_parallel_size": "8", "expert_model_parallel_size": "1",
        "rl_inference_tensor_model_parallel_size": "4", "rl_inference_expert_model_parallel_size": "1"})
    with pytest.raises(ConfigError, match=r"^needs 12 GPUs \(8 \+ 4\) but only 8 available: "):
        cfg.validate()


def test_pitfall_fixed_version_fits() -> None:
    w = world_layout("non-collocated", ParallelLayout(tp=4), ParallelLayout(tp=2), 8)
    assert w.describe().splitlines()[0] == "World size: 8 (using 6 GPUs)"
    assert list(w.idle_ranks) == [6, 7]


def test_collocated_too_many() -> None:
    with pytest.raises(ConfigError, match=r"needs 16 GPUs \(max\(16, 8\)\) but only 8 available"):
        world_layout("collocated", ParallelLayout(tp=8, ep=2), ParallelLayout(tp=8), 8)


def test_rank_coordinates_follow_megatron_order() -> None:
    lay = ParallelLayout(tp=2, ep=2, pp=2)
    got = [(c.tp, c.dp, c.ep, c.edp, c.pp) for c in map(lay.coords, range(8))]
    assert got == [(0, 0, 0, 0, 0), (1, 0, 1, 0, 0), (0, 1, 0, 1, 0), (1, 1, 1, 1, 0),
                   (0, 0, 0, 0, 1), (1, 0, 1, 0, 1), (0, 1, 0, 1, 1), (1, 1, 1, 1, 1)]


@pytest.mark.parametrize("overrides, message", [
    ({"expert_tensor_parallel_size": "2"}, "MoE needs --expert-tensor-parallel-size 1 and --rl-inference-expert-tensor-model-parallel-size 1"),
    ({"rl_inference_expert_tensor_model_parallel_size": "2"}, "MoE needs --expert-tensor-parallel-size 1"),
    ({"add_bias_linear": True}, "MoE refit needs --disable-bias-linear"),
    ({"num_attention_heads": "6", "hidden_size": "1020"}, "source: --num-attention-heads 6 is not divisible by --tensor-model-parallel-size 4"),
    ({"num_experts": "6"}, "source: --num-experts 6 is not divisible by --expert-model-parallel-size 4"),
    ({"num_layers": "3", "pipeline_model_parallel_size": "2", "tensor_model_parallel_size": "2"},
     "source: --num-layers 3 is not divisible by --pipeline-model-parallel-size 2"),
    ({"moe_shared_expert_intermediate_size": "514"}, "shared_experts.linear_fc1.weight ffn size 514 is not divisible by --tensor-model-parallel-size 4"),
    ({"num_experts": None, "ffn_hidden_size": "2690"}, "ffn size 2690 is not divisible by --tensor-model-parallel-size 4"),
    ({"padded_vocab_size": "1001"}, "vocab size 1001 is not divisible"),
    ({"num_query_groups": "2"}, "source: --num-query-groups 2 is not divisible by --tensor-model-parallel-size 4"),
])
def test_non_dividing_and_moe_errors(overrides: dict, message: str) -> None:
    base = resolve("config-6") if overrides.get("num_experts") else resolve("config-3")
    if "num_experts" in overrides and overrides["num_experts"] is None:
        base = base.with_changes(model=dataclasses.replace(base.model, num_experts=None))
        overrides = {k: v for k, v in overrides.items() if k != "num_experts"}
    if "expert_tensor" in str(overrides) or "bias" in str(overrides):
        base = resolve("config-1")
    with pytest.raises(ConfigError) as e:
        apply_overrides(base, overrides).validate()
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_config_lists_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown config 'config-9': use one of config-1, config-2"):
        resolve("config-9")
