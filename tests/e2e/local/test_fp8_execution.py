"""FP8 destinations executed (issue 17): the reference quantiser on hand-computed blocks, and gloo
refits whose every FP8 byte and scale equals the whole-tensor reference, bitwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.local import run_locally
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.execution.quantize import block_amax, dequantise, quantise, quantise_rows, scales_from_amax
from refit_core.planning.precision import execution_refusal
from test_execution_gloo import ranks, small


def _bytes(q: torch.Tensor) -> list[int]:
    return q.view(torch.uint8).reshape(-1).tolist()


def test_reference_quantiser_on_hand_computed_blocks() -> None:
    # 130 x 260: blocks of 128 and 2 rows, 128, 128 and 4 columns (ragged edges keep their extent)
    w = torch.zeros(130, 260)
    w[:128, :128] = 2.0
    w[5, 7] = -7.0            # block (0, 0): amax 7 -> scale 7/448 = 1/64; 2 -> 128, -7 -> -448
    w[:128, 256:] = 3.0       # block (0, 2), 128 x 4: amax 3 -> 3 -> 448, 0.5 -> 74.67 -> 72
    w[9, 258] = 0.5
    w[128:, :128] = 1.0       # block (1, 0), 2 x 128: amax 1000 -> 1 -> 0.448 -> 0.4375
    w[129, 3] = 1000.0        # (block (0, 1) and the rest stay all zero: scale 1.0, bytes 0)
    q, s = quantise(w.bfloat16())
    assert s.dtype == torch.float32 and s.shape == (2, 3)
    assert s.tolist() == [[1 / 64, 1.0, torch.tensor(3.0 / 448, dtype=torch.float32).item()],
                          [torch.tensor(1000.0 / 448, dtype=torch.float32).item(), 1.0, 1.0]]
    # e4m3fn bytes: 128 = 0x70, -448 = 0xFE, 448 = 0x7E, 72 = 0x69, 0.4375 = 0x2E, 0 = 0x00
    assert _bytes(q[0, 0]) == [0x70] and _bytes(q[5, 7]) == [0xFE] and _bytes(q[0, 128:130]) == [0, 0]
    assert _bytes(q[0, 256]) == [0x7E] and _bytes(q[9, 258]) == [0x69]
    assert _bytes(q[128, 0]) == [0x2E] and _bytes(q[129, 3]) == [0x7E] and _bytes(q[129, 200]) == [0]
    assert torch.equal(dequantise(q, s)[:128, :260], w[:128, :260].where(w[:128, :260] != 0.5, 72 * 3 / 448))
    # round to nearest even on ties (17 -> 16, 19 -> 20 at scale 1), saturation instead of NaN
    one = torch.ones(1, 1)
    x = torch.tensor([[17.0, 19.0, 1000.0, -1000.0]]).bfloat16()
    assert _bytes(quantise_rows(x, one)) == [0x58, 0x5A, 0x7E, 0xFE]
    assert scales_from_amax(torch.tensor([0.0, 448.0])).tolist() == [1.0, 1.0]


def test_rows_held_apart_give_the_whole_tensors_blocks() -> None:
    """A sender's partial maxima (rows cut inside a block) combine to the whole tensor's, and its
    rows quantise to the reference's bytes: what a gather across a source TP boundary relies on."""
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(300, 200, generator=g) * 30).bfloat16()
    q, s = quantise(w)
    top, bottom = block_amax(w[:150]), block_amax(w[150:], row0=150)  # blocks 0-1 and 1-2
    assert torch.equal(torch.maximum(top[1], bottom[0]), block_amax(w)[1])
    assert torch.equal(quantise_rows(w[150:], s[1:], row0=150).view(torch.uint8), q[150:].view(torch.uint8))


def _run(cfg, tmp_path: Path, **kw):
    codes, res = run_locally(cfg, tmp_path, timeout_s=240, **kw)
    return codes, res


@pytest.mark.parametrize("name", ["config-4", "collocated-4"])
def test_fp8_seed_configs_verify_bitwise_at_about_half_the_wire_bytes(name: str, tmp_path: Path) -> None:
    cfg = small(name, rl_inference_precision="fp8")
    fp8, bf16 = cfg.plan(), cfg.with_changes(inference_precision="bf16").plan()
    codes, res = _run(cfg, tmp_path)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"] and res["precision"] == "fp8"
    assert res["wire_bytes"] == fp8.network_bytes and res["delivered_bytes"] == fp8.delivered_bytes
    # weights one byte instead of two; the small model's embeddings and output layer stay bf16
    assert 0.5 < fp8.delivered_bytes / bf16.delivered_bytes < 0.62
    it = res["iterations"][-1]
    assert it["phases_ms"]["quantise"] > 0 and it["time_ms"] >= it["phases_ms"]["quantise"]
    for r in cfg.world().destination.ranks:
        assert ranks(tmp_path)[r].verified


def test_fp8_blocks_cut_by_the_source_tp_boundary_are_gathered_and_verify(tmp_path: Path) -> None:
    """A dense MLP of width 2688 at source TP 2: 1344 rows (fc1) and columns (fc2) per rank, 10.5 blocks."""
    cfg = small("config-4", rl_inference_precision="fp8", first_dense_layers=2, ffn_hidden_size=2688)
    plan = cfg.plan()
    cut = {plan.params[g.param].name for g in plan.gathers}
    assert {"decoder.layers.0.mlp.linear_fc1.weight_scale_inv",
            "decoder.layers.0.mlp.linear_fc2.weight_scale_inv"} <= cut
    codes, res = _run(cfg, tmp_path)
    assert codes == [0] * cfg.hardware.gpus and res["verified"], (tmp_path / "logs" / "rank-2.log").read_text()


def test_fp8_corrupted_byte_is_caught_and_named(tmp_path: Path) -> None:
    cfg = small("config-4", rl_inference_precision="fp8")
    codes, res = _run(cfg, tmp_path, grace_s=20, extra_env={"REFITCTL_FAULT": "corrupt:rank=2:iteration=1"})
    assert codes[2] != 0
    rec = ranks(tmp_path)[2]
    assert rec.verified is False and len(rec.iterations) == 1
    assert "VerificationError: rank 2: " in rec.error and " wrong at " in rec.error


def test_kimi_k2_small_fp8_preset_verifies_on_gloo(tmp_path: Path) -> None:
    cfg = apply_overrides(resolve("kimi-k2-small-fp8"), {"refit_method": "gloo"})
    cfg.validate()
    assert cfg.run.inference_precision == "fp8" and cfg.plan().gathers  # MLA's q_up_proj: 192 rows per TP rank
    codes, res = _run(cfg, tmp_path)
    assert codes == [0] * cfg.hardware.gpus and res["verified"] and res["precision"] == "fp8"


def test_fp8_runs_on_the_byte_generic_methods_only() -> None:
    assert all(execution_refusal("fp8", m) is None for m in ("nccl", "gloo", "nvshmem"))
    assert execution_refusal("bf16", "naive") is None
    assert execution_refusal("fp8", "naive") == (
        "--refit-method naive moves BF16 destinations only: run --rl-inference-precision fp8 with "
        "--refit-method nvshmem, nccl, gloo, or use --rl-inference-precision bf16")


def test_fp8_bench_runs_each_row_in_bf16_then_fp8() -> None:
    from benchmarks.fp8_bench import fp8_cases

    rows = fp8_cases(1, ("seed",), {"seed": 2}, 4)
    assert [(c.config.name, c.config.run.method, c.config.run.inference_precision) for c in rows] == [
        ("config-4", "nvshmem", "bf16"), ("config-4-fp8", "nvshmem", "fp8"),
        ("collocated-4", "nvshmem", "bf16"), ("collocated-4-fp8", "nvshmem", "fp8"),
        ("world-1", "nccl", "bf16"), ("world-1-fp8", "nccl", "fp8")]
    assert not any(c.skip for c in rows)


def test_fp8_two_sided_sender_has_no_send_image_and_stays_within_the_bucket(tmp_path: Path) -> None:
    """Issue 22: a gloo/nccl sender quantises each staging bucket as it packs it (and each local copy
    inside the copy), so no FP8 send image exists. Beyond its shards a rank holds the staging, within
    --refit-bucket-size as in BF16, plus its scales and scale-index tables (`fp8_source_bytes`), a few
    percent of the FP8 shard at this small model's narrow weights. At a 1 MiB bucket each source's wire
    shards (4.9 MB) are several buckets, so the old send image would not fit the bound."""
    bucket = 1 << 20
    cfg = small("config-4", rl_inference_precision="fp8", refit_bucket_size=bucket)
    codes, res = _run(cfg, tmp_path)
    assert codes == [0] * cfg.hardware.gpus and res["verified"], (tmp_path / "logs" / "rank-0.log").read_text()
    recs = ranks(tmp_path)
    sources = cfg.world().source.ranks
    assert {r: recs[r].transport["rounds"] > 1 for r in sources} == {r: True for r in sources}
    for r, rec in recs.items():
        info = rec.transport
        assert info["send_image_bytes"] == 0 and info["direct_ops"] == 0
        staging = rec.extra_bytes - info["fp8_source_bytes"]
        assert 0 < staging <= bucket, (r, rec.extra_bytes, info)
        if r in sources:  # source_bytes: its wire shards (FP8), what a send image would have held
            assert 0 < info["fp8_source_bytes"] < 0.05 * rec.source_bytes and rec.source_bytes > 4 * bucket, info


def test_fp8_bench_quantise_bound_is_the_issues_hbm_bound() -> None:
    """world-1-large: every quantised element on one GPU, read as BF16 and written as FP8 (3 bytes)
    at twice the local copy ceiling (1496 GB/s copied on the H100 of 2026-12-05): about 2.5 ms
    (issue 22's 2.6 ms counted the BF16 embeddings and norms too)."""
    from benchmarks.fp8_bench import quantise_bound_ms
    from benchmarks.gpu_bench import make_config
    from refit_core.planning.precision import destination_inventory
    from refit_core.planning.plan import plan_transfers

    cfg = make_config("world-1", "nccl", "large", 3, 4).with_changes(inference_precision="fp8")
    plan = plan_transfers(cfg.inventory(), cfg.world(), precision="fp8")
    elements = sum(plan.inventory.params[wi].numel for wi, _ in destination_inventory(plan.inventory, "fp8").scales)
    assert quantise_bound_ms(plan, 1, 1496.0) == pytest.approx(elements * 3 / (2 * 1496e6))
    assert 2.4 < quantise_bound_ms(plan, 1, 1496.0) < 2.6 and quantise_bound_ms(plan, 1, None) is None


def test_fp8_bench_cpu_smoke_writes_issue_22s_record(tmp_path: Path) -> None:
    """The GPU session's command, end to end on the CPU (gloo, tiny model): every field the record
    needs, each FP8 row beside its BF16 twin, every row verified."""
    from benchmarks.fp8_bench import main

    out = tmp_path / "fp8.json"
    assert main(["--cpu-smoke", "--iterations", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["precision"], r["size"]) for r in rows] == [
        ("config-4-tiny", "bf16", "tiny"), ("config-4-tiny-fp8", "fp8", "tiny"),
        ("collocated-4-tiny", "bf16", "tiny"), ("collocated-4-tiny-fp8", "fp8", "tiny")]
    for bf16, fp8 in zip(rows[::2], rows[1::2]):
        for r in (bf16, fp8):
            assert r["verified"] and r["median_ms"] > 0 and r["phases_ms"]
            assert {"bound_ms", "ratio_to_bound", "extra_bytes_measured_max"} <= set(r)
        assert fp8["quantise_ms"] == fp8["phases_ms"]["quantise"] > 0 and "pack" in fp8["quantise_measured_as"]
        assert fp8["bf16_median_ms"] == bf16["median_ms"] and fp8["fp8_over_bf16"] == fp8["median_ms"] / bf16["median_ms"]
        assert "quantise_bound_ms" in fp8 and 0.5 < fp8["wire_vs_bf16"] < 0.62
