"""Kimi K2: the inventory against the published model, the two 128-GPU configs, memory fit, time model."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import cli
from orchestrator.configs import builtin_configs
from orchestrator.configs.flags import apply_overrides
from orchestrator.configs.kimi_k2 import (
    KIMI_K2_CONFIGS,
    KIMI_K2_MODEL,
    PUBLISHED_SAFETENSORS_PARAMS,
    PUBLISHED_TECH_REPORT_PARAMS,
)
from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout
from refit_core.numbers import GIB
from refit_core.planning.memory import NVSHMEM_OVERHEAD_BYTES, slot_sizes
from refit_core.planning.model import Inventory, ModelSpec, ParamSpec, inventory
from refit_core.planning.plan import Plan, Transfer, plan_transfers
from refit_core.planning.sharding import local_shape
from refit_core.planning.storage import rank_storage
from refit_core.planning.timemodel import LinkModel, predict
from refit_core.planning.validate import check_plan

CONFIGS = {c.name: c for c in KIMI_K2_CONFIGS}


@pytest.fixture(scope="module")
def kimi_inventory() -> Inventory:
    return inventory(KIMI_K2_MODEL, (2, 1))


@pytest.fixture(scope="module")
def full_plans() -> dict[str, tuple[RunConfig, Plan]]:
    out = {}
    for name, cfg in CONFIGS.items():
        out[name] = (cfg, plan_transfers(cfg.inventory(), cfg.world()))
    return out


# ---- the model -----------------------------------------------------------------------------

def test_parameter_count_matches_published(kimi_inventory: Inventory) -> None:
    h, v, layers, experts = 7168, 163840, 61, 384
    attention = (1536 * h + 1536 + 64 * 192 * 1536 + 576 * h + 512 + 64 * 256 * 512 + h * 64 * 128) + h
    expert = 3 * h * 2048
    moe_layer = attention + h + 384 * h + 384 + experts * expert + expert  # router weight + expert_bias
    dense_layer = attention + 3 * h * 18432 + h
    expected = 2 * v * h + dense_layer + (layers - 1) * moe_layer + h
    # the published config.json's count: hidden 7168, 61 layers, first dense 1, 384 routed + 1 shared
    # experts (moe_intermediate 2048), MLA q_lora 1536 / kv_lora 512, vocab 163840, untied output,
    # and each MoE router's e_score_correction_bias (60 x 384 = 23,040)
    assert kimi_inventory.numel == expected == 1_026_408_232_448
    bias = kimi_inventory.params[kimi_inventory.index["decoder.layers.60.mlp.router.expert_bias"]]
    assert bias.shape == (384,) and bias.dtype == "float32" and bias.tp_dim is None
    assert abs(kimi_inventory.numel - PUBLISHED_SAFETENSORS_PARAMS) / PUBLISHED_SAFETENSORS_PARAMS < 0.001
    assert abs(kimi_inventory.numel - PUBLISHED_TECH_REPORT_PARAMS) / PUBLISHED_TECH_REPORT_PARAMS < 0.015


def test_named_weights_have_megatron_shapes_and_splits(kimi_inventory: Inventory) -> None:
    by_name = {p.name: p for p in kimi_inventory.params}
    a = "decoder.layers.5.self_attention."
    want = {
        "embedding.word_embeddings.weight": ((163840, 7168), 0),
        "output_layer.weight": ((163840, 7168), 0),
        f"{a}linear_q_down_proj.weight": ((1536, 7168), None),
        f"{a}linear_q_up_proj.layer_norm_weight": ((1536,), None),
        f"{a}linear_q_up_proj.weight": ((64 * (128 + 64), 1536), 0),
        f"{a}linear_kv_down_proj.weight": ((512 + 64, 7168), None),
        f"{a}linear_kv_up_proj.layer_norm_weight": ((512,), None),
        f"{a}linear_kv_up_proj.weight": ((64 * (128 + 128), 512), 0),
        f"{a}linear_proj.weight": ((7168, 64 * 128), 1),
        "decoder.layers.0.mlp.linear_fc1.weight": ((2 * 18432, 7168), 0),
        "decoder.layers.0.mlp.linear_fc1.layer_norm_weight": ((7168,), None),
        "decoder.layers.0.mlp.linear_fc2.weight": ((7168, 18432), 1),
        "decoder.layers.60.mlp.router.weight": ((384, 7168), None),
        "decoder.layers.60.mlp.experts.local_experts.383.linear_fc1.weight": ((2 * 2048, 7168), None),
        "decoder.layers.60.mlp.experts.local_experts.383.linear_fc2.weight": ((7168, 2048), None),
        "decoder.layers.60.mlp.shared_experts.linear_fc1.weight": ((2 * 2048, 7168), 0),
        "decoder.layers.60.pre_mlp_layernorm.weight": ((7168,), None),
        "decoder.final_layernorm.weight": ((7168,), None),
    }
    for name, (shape, tp_dim) in want.items():
        assert (by_name[name].shape, by_name[name].tp_dim) == (shape, tp_dim), name
    assert "decoder.layers.0.pre_mlp_layernorm.weight" not in by_name  # fused into linear_fc1 (dense layer)
    assert not any(p.name.endswith("bias") and not p.name.endswith("router.expert_bias") for p in kimi_inventory.params)
    assert not any(p.name.startswith("decoder.layers.61.") for p in kimi_inventory.params)  # no MTP layer
    tp2 = ParallelLayout(tp=2)
    assert local_shape(by_name[f"{a}linear_q_up_proj.weight"], tp2) == (6144, 1536)
    assert local_shape(by_name[f"{a}linear_kv_up_proj.weight"], tp2) == (8192, 512)
    assert local_shape(by_name[f"{a}linear_proj.weight"], tp2) == (7168, 4096)
    assert local_shape(by_name[f"{a}linear_q_down_proj.weight"], tp2) == (1536, 7168)


# ---- the configs ---------------------------------------------------------------------------

def test_configs_are_registered_and_valid() -> None:
    registry = builtin_configs()
    for name in ("kimi-k2", "kimi-k2-collocated"):
        cfg = registry[name]
        cfg.validate()
        assert cfg.hardware.gpus == 128 and cfg.layouts.source.etp == cfg.layouts.destination.etp == 1
        assert cfg.world().gpus_used == 128
    assert registry["kimi-k2"].layouts.mode is RefitMode.NON_COLLOCATED and registry["kimi-k2"].run.method == "nvshmem"
    assert registry["kimi-k2-collocated"].layouts.mode is RefitMode.COLLOCATED
    assert registry["kimi-k2-collocated"].run.method == "nccl"


def test_config_round_trips_through_json() -> None:
    cfg = CONFIGS["kimi-k2-collocated"].with_changes(gpu_memory_gb=141.0, inter_node_gbps=25.0)
    assert RunConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    old = cfg.to_json()
    for key in ("gpu_memory_gb", "gpus_per_node", "intra_node_gbps", "inter_node_gbps"):
        del old["hardware"][key]
    assert RunConfig.from_json(old).hardware.gpu_memory_gb == 80.0


def reduced(name: str, num_layers: int = 2, num_experts: int = 128) -> RunConfig:
    """A Kimi K2 config with the CLI's --num-layers/--num-experts overrides (same widths, fewer tensors)."""
    return apply_overrides(CONFIGS[name], {"num_layers": num_layers, "num_experts": num_experts})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reduced_plan_covers_every_element_once(name: str) -> None:
    cfg = reduced(name, num_layers=2 * CONFIGS[name].layouts.source.pp)
    cfg.validate()
    plan = plan_transfers(cfg.inventory(), cfg.world())
    check_plan(plan)
    assert plan.balance <= 1.05
    from refit_core.planning.storage import rank_storage

    dst_need = sum(slot.nbytes for r in range(cfg.layouts.destination.size)
                   for slot in rank_storage(plan.inventory, cfg.layouts.destination, r).slots)
    assert plan.delivered_bytes == dst_need  # every destination byte once (no alignment padding)
    assert sum(shard_bytes(plan.inventory, cfg.layouts.destination)) >= dst_need


@settings(max_examples=12, deadline=None)
@given(
    layers=st.integers(1, 3),
    src=st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4, 8])),
    dst=st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4, 8])),
    collocated=st.booleans(),
)
def test_kimi_shapes_plan_exactly_once_on_random_layouts(layers: int, src: tuple[int, int], dst: tuple[int, int],
                                                         collocated: bool) -> None:
    model = dataclasses.replace(KIMI_K2_MODEL, num_layers=layers, num_experts=8)
    s, d = ParallelLayout(tp=src[0], ep=src[1]), ParallelLayout(tp=dst[0], ep=dst[1])
    mode = RefitMode.COLLOCATED if collocated else RefitMode.NON_COLLOCATED
    cfg = RunConfig.of("random", model, s, d, mode=mode, gpus=64)
    cfg.validate()
    check_plan(plan_transfers(cfg.inventory(), cfg.world()))


def test_num_layers_override_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "kimi-k2", "--num-layers", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 128 and out["memory"]["fits"]
    assert out["model"]["tensors"] == len(inventory(dataclasses.replace(KIMI_K2_MODEL, num_layers=4), (2, 1)).params)
    assert out["predicted"]["time_s"] >= out["predicted"]["bound_s"] > 0


# ---- memory fit ----------------------------------------------------------------------------

def test_memory_per_gpu_of_both_configs() -> None:
    nc = CONFIGS["kimi-k2"].memory_fit()
    assert nc.fits and nc.busiest.role == "source"
    assert 70 * GIB < nc.busiest.source_bytes < 72 * GIB  # 384/32 experts x 60 layers + half the dense weights
    # nvshmem across nodes (placement `all`): every GPU allocates the same symmetric heap, sized by
    # the largest shard, + NVSHMEM's own memory
    assert {m.total for m in nc.per_rank} == {nc.busiest.source_bytes + NVSHMEM_OVERHEAD_BYTES}
    co = CONFIGS["kimi-k2-collocated"].memory_fit()
    assert co.fits and co.busiest.role == "source+destination"
    assert co.busiest.buffer_bytes == 256 << 20 and co.headroom_bytes > GIB


def shard_bytes(inv: Inventory, layout: ParallelLayout) -> list[int]:
    """Bytes of each local rank's shard buffer in `layout`, as the memory fit counts them."""
    return [sum(s) for s in slot_sizes(inv, layout)]


def test_shard_bytes_match_the_engine_storage_layout() -> None:
    cfg = reduced("kimi-k2-collocated", num_experts=128)
    inv = cfg.inventory()
    for layout in (cfg.layouts.source, cfg.layouts.destination):
        held = shard_bytes(inv, layout)
        for local in (0, 1, layout.size - 1):
            assert held[local] == rank_storage(inv, layout, local).nbytes


def test_memory_error_says_how_far_over_and_what_to_change() -> None:
    cfg = apply_overrides(CONFIGS["kimi-k2"], {
        "rl_inference_tensor_model_parallel_size": 8, "rl_inference_expert_model_parallel_size": 8,
    })
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    msg = str(e.value)
    assert "\n" not in msg
    # TP=8, EP=8 with ETP=1: each GPU holds 48 experts x 60 layers, every expert on 8 GPUs
    assert msg.startswith("GPU 64 (destination) needs 240.97 GiB (source shard 0.00 GiB + destination shard 240.76")
    assert "but --gpu-memory-gb is 80 GiB: 160.97 GiB over;" in msg
    assert msg.endswith("larger --rl-inference-expert-model-parallel-size so each GPU holds fewer experts")


def test_memory_error_suggests_smaller_buckets_when_they_suffice() -> None:
    cfg = apply_overrides(CONFIGS["kimi-k2-collocated"], {"refit_bucket_size": "2GiB"})
    with pytest.raises(ConfigError, match=r"needs 80\.06 GiB .* 0\.06 GiB over; .*, or a smaller --refit-bucket-size$"):
        cfg.validate()
    apply_overrides(cfg, {"gpu_memory_gb": 141}).validate()  # an H200 holds it with 2 GiB buckets


def test_memory_error_is_one_line_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "kimi-k2", "--gpu-memory-gb", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("refitctl: error: GPU 0 (source) needs 71.21 GiB")


# ---- time model ----------------------------------------------------------------------------

def test_time_model_on_a_hand_computed_plan() -> None:
    # One tensor whose rows are exactly 1 GB each (bf16: 5e8 elements); 4 GPUs, 2 per node.
    spec = ModelSpec(num_layers=1, disable_bias_linear=True)
    inv = Inventory(spec, (ParamSpec("w", (100, 500_000_000)),), 0)
    world = world_layout(RefitMode.COLLOCATED, ParallelLayout(tp=4), ParallelLayout(tp=4), 4)
    gb = 10**9
    ts = (
        Transfer(0, 0, 1, 0, 9, 0, 0),    # GPU 0 -> 1: 9 GB, same node
        Transfer(0, 0, 2, 10, 5, 0, 0),   # GPU 0 -> 2: 5 GB, across nodes
        Transfer(0, 1, 3, 20, 2, 0, 0),   # GPU 1 -> 3: 2 GB, across nodes
        Transfer(0, 3, 3, 30, 3, 0, 0),   # GPU 3 local copy: 3 GB
    )
    plan = Plan(world, inv, ts, 0)
    link = LinkModel(gpus_per_node=2, intra_node_gbps=10, inter_node_gbps=5, local_copy_gbps=30)
    pred = predict(plan, link)
    g = {x.rank: x for x in pred.loads}
    assert (g[0].intra_out, g[0].inter_out, g[1].intra_in, g[1].inter_out) == (9 * gb, 5 * gb, 9 * gb, 2 * gb)
    assert (g[2].inter_in, g[3].inter_in, g[3].local) == (5 * gb, 2 * gb, 3 * gb)
    # bound: the busiest single link, GPU 0's network out (and GPU 2's in): 5 GB / 5 GB/s
    assert pred.bound_s == pytest.approx(1.0)
    assert (pred.bottleneck_rank, pred.bottleneck_link) == (0, "inter-node out")
    # predicted: GPU 0 does 9 GB over NVLink (0.9 s) then 5 GB over the network (1.0 s)
    assert pred.time_s == pytest.approx(1.9)
    assert [x.serial_s(link) for x in pred.loads] == pytest.approx([1.9, 1.3, 1.0, 0.5])
    # balance: sources send 14, 2, 0, 0 GB (mean 4); destinations receive 0, 9, 5, 2 GB (mean 4)
    assert pred.balance.out_ratio == pytest.approx(3.5)
    assert pred.balance.in_ratio == pytest.approx(2.25)


def test_full_plans_are_balanced_and_predicted(full_plans: dict[str, tuple[RunConfig, Plan]]) -> None:
    cfg, plan = full_plans["kimi-k2"]
    pred = predict(plan, cfg.link_model())
    assert plan.world.world_size == 128 and plan.balance <= 1.05 and pred.balance.out_ratio <= 1.05
    # Non-collocated on separate nodes: every byte crosses the network, so time == bound ==
    # the busiest destination's shard / 50 GB/s.
    assert all(x.intra_in == x.intra_out == x.local == 0 for x in pred.loads)
    assert pred.time_s == pytest.approx(pred.bound_s)
    assert pred.bound_s == pytest.approx(max(shard_bytes(plan.inventory, cfg.layouts.destination)) / 50e9, rel=1e-6)
    cfg, plan = full_plans["kimi-k2-collocated"]
    pred = predict(plan, cfg.link_model())
    assert plan.balance <= 1.05 and pred.balance.out_ratio <= 1.05 and pred.balance.in_ratio <= 1.05
    assert pred.time_s >= pred.bound_s > 0


@pytest.mark.slurm
@pytest.mark.parametrize("name", ["kimi-k2-small", "kimi-k2-small-fp8"])
def test_make_kimi_k2_small_runs_verified_on_the_local_slurm_cluster(name: str, tmp_path) -> None:
    """`make kimi-k2-small`'s command: Kimi K2's layout shapes on 2 nodes x 4 GPUs, verified (the FP8
    variant: every destination FP8 byte and scale against the reference quantisation)."""
    import shutil
    import subprocess

    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        pytest.skip("needs the local SLURM cluster: make slurm-up")
    from helpers import refitctl, run_json, only_run

    p = refitctl("submit", name, "--cluster", "slurm", "--gpus-per-node", "4", "--refit-method", "gloo",
                 "--time", "10", "--poll", "1", runs=tmp_path, check=0)
    assert "Executor: SLURM (--cluster slurm); 2 nodes x 4 tasks" in p.stdout
    d = only_run(tmp_path)
    assert run_json(d)["final"]["state"] == "COMPLETED"
    res = json.loads((d / "results.json").read_text())
    assert res["verified"] and res["timed_iterations"] == 3
    assert res.get("precision", "bf16") == ("fp8" if name.endswith("fp8") else "bf16")
