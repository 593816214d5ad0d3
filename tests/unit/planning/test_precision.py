"""FP8 destinations in the planner (issue 17, part 1's planning side): what becomes FP8, the scale
tensors, blocks cut by a TP boundary, bytes on the wire, and the refusal to execute."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings

from orchestrator.cli import main
from orchestrator.configs import resolve
from orchestrator.configs.kimi_k2 import KIMI_K2_MODEL
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout
from refit_core.planning.model import inventory
from refit_core.planning.nodes import NodeMap
from refit_core.planning.plan import plan_transfers
from refit_core.planning.precision import destination_slot_sizes, FP8_DTYPE, destination_inventory, is_quantised
from refit_core.planning.validate import check_plan
from test_plan import layout_pairs


def test_kimi_k2_linear_weights_become_fp8_and_the_rest_stays_bf16() -> None:
    inv = inventory(KIMI_K2_MODEL)
    names = {p.name for p in inv.params if is_quantised(p)}
    for n in ("decoder.layers.0.mlp.linear_fc1.weight", "decoder.layers.0.self_attention.linear_q_down_proj.weight",
              "decoder.layers.5.self_attention.linear_kv_up_proj.weight", "decoder.layers.5.self_attention.linear_proj.weight",
              "decoder.layers.5.mlp.shared_experts.linear_fc2.weight",
              "decoder.layers.5.mlp.experts.local_experts.383.linear_fc1.weight"):
        assert n in names
    for n in ("embedding.word_embeddings.weight", "output_layer.weight", "decoder.layers.5.mlp.router.weight",
              "decoder.layers.5.mlp.router.expert_bias", "decoder.layers.0.mlp.linear_fc1.layer_norm_weight",
              "decoder.layers.5.self_attention.linear_q_up_proj.layer_norm_weight", "decoder.final_layernorm.weight"):
        assert n in inv.index and n not in names
    d = destination_inventory(inv, "fp8")
    scales = [d.inventory.params[si] for _, si in d.scales]
    # the published checkpoint's weight_scale_inv count (docs/kimi-k2.md, "Parameter count")
    assert sum(p.numel for p in scales) == 62_495_192
    kv = d.inventory.params[d.inventory.index["decoder.layers.5.self_attention.linear_kv_down_proj.weight_scale_inv"]]
    assert kv.shape == (5, 56) and kv.dtype == "float32"  # 576 x 7168: the last row block is 64 rows
    assert d.inventory.params[inv.index["decoder.layers.5.mlp.shared_experts.linear_fc1.weight"]].dtype == FP8_DTYPE


def dense_2688(src_tp: int, dst_tp: int):
    """The seed's width 2688 as a dense MLP (seed experts are whole on a rank, ETP=1): 1344 rows per
    TP-2 shard = 10.5 blocks, so TP 2 cuts block 10 of the gate half and block 31 of the up half."""
    model = dataclasses.replace(resolve("config-1").model, num_experts=None, moe_shared_expert_intermediate_size=None,
                                swiglu=True, disable_bias_linear=True, num_layers=1)
    inv = inventory(model, (src_tp, dst_tp))
    return inv, world_layout(RefitMode.NON_COLLOCATED, ParallelLayout(tp=src_tp), ParallelLayout(tp=dst_tp))


def test_a_block_cut_by_source_tp_is_gathered_and_every_scale_delivered_once() -> None:
    inv, world = dense_2688(2, 1)
    plan = plan_transfers(inv, world, NodeMap(8), "fp8")
    check_plan(plan)
    fc1 = inv.index["decoder.layers.0.mlp.linear_fc1.weight"]
    cut = [(plan.params[g.param].name, g.start, g.length, g.parts) for g in plan.gathers]
    assert cut == [("decoder.layers.0.mlp.linear_fc1.weight_scale_inv", 10, 1, ((0,), (1,))),
                   ("decoder.layers.0.mlp.linear_fc1.weight_scale_inv", 31, 1, ((0,), (1,))),
                   ("decoder.layers.0.mlp.linear_fc2.weight_scale_inv", 10, 1, ((0,), (1,)))]  # columns
    scale = plan.destination.index["decoder.layers.0.mlp.linear_fc1.weight_scale_inv"]
    got = sorted((t.start, t.length, t.src) for t in plan.transfers if t.param == scale)
    # blocks 0-9 from rank 0, block 10 from its gather's owner (rank 0), 11-20 from rank 1; up half alike
    assert got == [(0, 11, 0), (11, 10, 1), (21, 11, 0), (32, 10, 1)]
    # the FP8 weight rows themselves come from whoever holds them, one byte each
    rows = sum(t.length for t in plan.transfers if t.param == fc1)
    assert rows == 2 * 2688 and plan.nbytes(next(t for t in plan.transfers if t.param == fc1)) < 2688 * 4096


def test_destination_tp_cut_gives_both_ranks_the_block() -> None:
    inv, world = dense_2688(1, 2)
    plan = plan_transfers(inv, world, None, "fp8")
    check_plan(plan)
    assert plan.gathers == ()  # the source holds every block whole
    scale = plan.destination.index["decoder.layers.0.mlp.linear_fc1.weight_scale_inv"]
    per_dst = {d: sorted((t.start, t.length) for t in plan.transfers if t.param == scale and t.dst == d)
               for d in world.destination.ranks}
    assert per_dst == {1: [(0, 11), (21, 11)], 2: [(10, 11), (31, 11)]}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout_pairs())
def test_fp8_plans_cover_weights_and_scales_exactly_once(case) -> None:
    model, src, dst, mode = case
    inv = inventory(model, (src.tp, dst.tp))
    world = world_layout(mode, src, dst)
    fp8 = plan_transfers(inv, world, NodeMap(4), "fp8")
    check_plan(fp8)
    bf16 = plan_transfers(inv, world, NodeMap(4))
    assert fp8.delivered_bytes < bf16.delivered_bytes


def test_fp8_halves_kimi_k2_wire_bytes_and_the_bound() -> None:
    cfg = resolve("kimi-k2").with_changes(inference_precision="fp8")
    inv, world = cfg.inventory(), cfg.world()
    fp8 = cfg.plan(inv, world)
    bf16 = cfg.with_changes(inference_precision="bf16").plan(inv, world)
    assert 0.5 < fp8.network_bytes / bf16.network_bytes < 0.6  # embeddings and output layer stay bf16
    assert cfg.memory_fit(inv, world).busiest.rank == 0  # sources, bf16, are the busiest GPUs


def test_fp8_is_planned_and_a_run_with_a_bf16_only_method_is_refused_in_one_line(capsys) -> None:
    assert main(["plan", "config-4", "--rl-inference-precision", "fp8"]) == 0
    capsys.readouterr()
    assert main(["submit", "config-4", "--rl-inference-precision", "fp8", "--cluster", "local",
                 "--refit-method", "megatron-gloo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refitctl: error: --refit-method megatron-gloo moves BF16 destinations only: run --rl-inference-precision "
                   "fp8 with --refit-method nvshmem, nccl, gloo, or use --rl-inference-precision bf16"]
    with pytest.raises(ConfigError, match="--rl-inference-precision must be one of bf16, fp8, got 'fp4'"):
        resolve("config-4").with_changes(inference_precision="fp4").validate()


def test_kimi_k2_record_shape_predicts_under_one_second_bounded_by_the_destination_nic() -> None:
    """docs/kimi-k2.md, "The record's setup": 256 BF16 training GPUs -> 128 FP8 inference GPUs, every byte straight
    from a source (--relay off; relayed: tests/unit/planning/test_relay.py)."""
    from refit_core.planning.timemodel import predict

    cfg = resolve("kimi-k2-record").with_changes(relay="off")
    cfg.validate()  # fits 80 GiB per GPU
    inv, world = cfg.inventory(), cfg.world()
    assert (world.world_size, len(world.source.ranks), len(world.destination.ranks)) == (384, 256, 128)
    plan = cfg.plan(inv, world)
    link = cfg.with_changes(intra_node_gbps=372.0, intra_node_both_gbps=365.0).link_model()
    pred = predict(plan, link)
    assert pred.time_s == pytest.approx(pred.bound_s) and pred.time_s < 1.0
    assert pred.bottleneck_link == "inter-node in" and world.destination.first_rank <= pred.bottleneck_rank
    assert pred.time_s == pytest.approx(0.443, abs=5e-4)
    # every source NIC busy: within each pipeline stage the sources send equal shares, none idle
    out = plan.class_out["inter-node"]
    for stage in range(4):
        v = [out[r] for r in range(stage * 64, stage * 64 + 64)]
        assert min(v) > 0.999 * max(v)
    bf16 = predict(cfg.with_changes(inference_precision="bf16").plan(inv, world), link)
    assert bf16.time_s == pytest.approx(0.786, abs=5e-4)


@pytest.mark.parametrize("method", ["nccl", "nvshmem"])
def test_memory_fit_counts_an_fp8_send_image_only_for_one_sided_methods(method: str) -> None:
    """Issue 22: nccl/gloo senders quantise each bucket as they pack it (no image beyond the bucket);
    an nvshmem sender still writes a whole send image that its peers read."""
    from orchestrator.configs import resolve

    cfg = resolve("kimi-k2-record").with_changes(method=method)
    bf16 = cfg.with_changes(inference_precision="bf16").memory_fit()
    fp8 = cfg.memory_fit()
    src = 0  # a source GPU: same BF16 shards either way
    assert fp8.per_rank[src].source_bytes == bf16.per_rank[src].source_bytes
    extra = fp8.per_rank[src].buffer_bytes - bf16.per_rank[src].buffer_bytes
    if method == "nccl":
        assert extra == 0
    else:  # one-sided: the FP8 image of its shards (about half their BF16 bytes) among its buffers
        image = sum(destination_slot_sizes(cfg.inventory(), cfg.layouts.source, "fp8")[0])
        assert 0.45 * bf16.per_rank[src].source_bytes < image < fp8.per_rank[src].buffer_bytes
