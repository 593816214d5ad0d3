"""benchmarks/gpu_bench.py's pure parts: which rows a machine gets, each row's bytes and bound."""

from __future__ import annotations

import pytest

from benchmarks.gpu_bench import (bound, cases, evenly_placed, make_config, pick, probe_size, slug, table, traffic)
from refit_core.planning.plan import plan_transfers

SEED_ITERS = {"seed": 2, "large": 1}


def test_two_gpus_get_nvshmem_seed_rows_and_the_two_gpu_nccl_layouts() -> None:
    rows = cases(2, False, SEED_ITERS, 4, ("seed",))
    nv = {c.label: c.skip for c in rows if c.config.run.method == "nvshmem"}
    assert len(nv) == 10 and nv["config-4"] == "uneven: 3 PEs on 2 GPUs"
    assert all(not why for name, why in nv.items() if name != "config-4")
    nccl = [c.label for c in rows if c.config.run.method == "nccl"]
    assert nccl == ["tp1-to-tp1", "tp1-to-tp1 (all staged)", "tp2-to-tp1ep2-collocated",
                    "tp2-to-tp1ep2-collocated (all staged)", "world-1"]
    assert all(c.config.hardware.gpus == c.config.world().gpus_used for c in rows)


def test_one_gpu_quick_marks_the_two_rank_layouts() -> None:
    rows = {c.label: c.skip for c in cases(1, True, SEED_ITERS, 4, ("seed",))}
    assert rows["config-4"] == rows["collocated-4"] == ""
    assert rows["tp1-to-tp1"] == "needs 2 GPUs (one rank per GPU), 1 here" and rows["world-1"] == ""


def test_eight_gpus_run_every_seed_config_with_nccl_too() -> None:
    nccl = {c.config.name for c in cases(8, False, SEED_ITERS, 4, ("seed",)) if c.config.run.method == "nccl" and not c.skip}
    assert {"config-1", "config-4", "collocated-1", "collocated-4", "tp1-to-tp1"} <= nccl


def test_evenly_placed() -> None:
    assert evenly_placed(8, 2) and evenly_placed(3, 8) and evenly_placed(6, 2)
    assert not evenly_placed(3, 2) and not evenly_placed(6, 4)


def test_traffic_and_bound_use_the_directions_in_use() -> None:
    """TP1 -> TP1: GPU 0 only sends (one-way ceiling); collocated TP2 -> TP1/EP2: both GPUs send
    and receive (each-way ceiling), and their local copies bound them too."""
    by_size = {"nccl_one_way": {str(1 << 30): 372.0}, "nccl_both_ways": {str(1 << 30): 365.0},
               "local_copy": {str(1 << 30): 2141.0}}
    nc = make_config("tp1-to-tp1", "nccl", "seed", 2, 4)
    plan = plan_transfers(nc.inventory(), nc.world())
    t = traffic(plan, 2)
    assert (t.network_bytes_max, t.both_ways, t.local_bytes_max) == (plan.network_bytes, False, 0)
    b = bound(t, "nccl", 2, by_size)
    assert b["ceiling"] == "nccl_one_way" and b["bound_ms"] == pytest.approx(plan.network_bytes / 372e6)
    co = make_config("tp2-to-tp1ep2-collocated", "nccl", "seed", 2, 4)
    plan = plan_transfers(co.inventory(), co.world())
    t = traffic(plan, 2)
    assert t.both_ways and t.network_bytes_max == max(plan.per_rank[r].bytes_in for r in (0, 1))
    b = bound(t, "nvshmem", 2, {**by_size, "peer_copy_both_ways": {"1024": 356.0}})
    assert b["ceiling"] == "peer_copy_both_ways" and b["ceiling_GBps"] == 356.0
    assert b["bound_ms"] == pytest.approx(max(t.network_bytes_max / 356e6, t.local_bytes_max / 2141e6))
    # all PEs on one GPU: nothing crosses a link; the local copy bounds it
    one = traffic(plan, 1)
    assert one.network_bytes_max == 0 and one.local_bytes_max == plan.delivered_bytes
    assert bound(one, "nccl", 1, by_size)["ceiling"] is None


def test_sizes_ceilings_and_names() -> None:
    assert probe_size(3 << 20, 4 << 30) == 16 << 20 and probe_size(900 << 20, 4 << 30) == 1 << 30
    assert probe_size(40 << 30, 4 << 30) == 4 << 30
    assert pick({str(16 << 20): 100.0, str(1 << 30): 300.0}, 700 << 20) == 300.0
    assert pick({}, 5) is None
    assert slug("NVIDIA H200") == "h200" and slug("NVIDIA H100 80GB HBM3") == "h100"
    text = table([{"config": "x", "method": "nccl", "gpus": 2, "pes": 2, "skipped": "uneven"}])
    assert text.splitlines()[1].split()[:4] == ["x", "nccl", "2", "2"]


def test_a_row_runs_through_the_local_launcher_and_has_every_recorded_field(tmp_path) -> None:  # noqa: ANN001
    """The row path on CPU: the 2-rank TP1 -> TP1 layout with gloo over its sockets (as nccl runs between GPUs),
    small model, zero-copy on."""
    from conftest import SMALL_FLAGS

    from benchmarks.gpu_bench import Case, run_case
    from orchestrator.configs.flags import apply_overrides

    cfg = apply_overrides(make_config("tp1-to-tp1", "gloo", "seed", 2, 4), {**SMALL_FLAGS, "gloo_shared_memory": "off"})
    by_size = {"nccl_one_way": {str(1 << 20): 1.0}, "local_copy": {str(1 << 20): 10.0}}
    row = run_case(Case(cfg, "seed"), 2, tmp_path, by_size)
    assert row["verified"] is True, row.get("error")
    for key in ("config", "method", "gpus", "pes", "bytes", "network_bytes_max_rank", "median_ms", "bound_ms",
                "ratio_to_bound", "verified", "extra_bytes_measured_max", "phases_ms", "network_ratio"):
        assert key in row
    assert row["gpus"] == row["pes"] == 2 and row["network_bytes_max_rank"] == row["bytes"]
    assert row["bound_ms"] == pytest.approx(row["bytes"] / 1e6) and row["transport"]["zero_copy"] is True
    # rank 0's record: the whole shard is one coalesced run, sent as one zero-copy message
    assert row["transport"]["direct_ops"] == 1 and row["transport"]["staged_bytes"] == 0
