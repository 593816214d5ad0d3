"""Measured ceilings as the link model: the file the GPU benchmark writes, --ceilings and flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli import main
from refit_core.planning.ceilings import link_figures
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout
from refit_core.planning.model import ModelSpec, inventory
from refit_core.planning.plan import plan_transfers
from refit_core.planning.timemodel import LinkModel, predict

# 2 x H200 (NV18), 2026-11-29 (issue 13)
H200 = {"device": "NVIDIA H200", "date": "2026-11-29", "ceilings": {
    "local_copy": 2141.0, "peer_copy_one_way": 396.0, "peer_copy_both_ways": 356.5,
    "nccl_one_way": 372.0, "nccl_both_ways": 365.0}}


def write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "ceilings.json"
    p.write_text(json.dumps(data))
    return p


def plan_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_method_takes_its_own_engine_figures() -> None:
    nccl = link_figures(H200, "nccl", "f.json")
    assert (nccl.intra_node_gbps, nccl.intra_node_both_gbps, nccl.local_copy_gbps) == (372.0, 365.0, 2141.0)
    nv = link_figures(H200, "nvshmem", "f.json")
    assert (nv.intra_node_gbps, nv.intra_node_both_gbps) == (396.0, 356.5)
    assert nv.source == ("measured ceilings f.json (NVIDIA H200, 2026-11-29: "
                         "peer_copy_one_way, peer_copy_both_ways, local_copy)")


def test_the_model_uses_both_ways_only_where_a_gpu_sends_and_receives() -> None:
    """Collocated TP2 -> TP1/EP2 on 2 ranks: each rank sends and receives (each-way figure);
    non-collocated TP1 -> TP1: one way only (one-way figure)."""
    model = ModelSpec(num_layers=2, hidden_size=256, num_attention_heads=8, ffn_hidden_size=512, num_experts=8,
                      moe_shared_expert_intermediate_size=256, disable_bias_linear=True, vocab_size=1024)
    link = LinkModel(gpus_per_node=8, intra_node_gbps=372.0, intra_node_both_gbps=365.0, local_copy_gbps=2141.0)
    one = ParallelLayout(tp=1, ep=1)
    nc = plan_transfers(inventory(model, (1, 1)), world_layout(RefitMode.NON_COLLOCATED, one, one))
    assert predict(nc, link).bound_s == pytest.approx(nc.network_bytes / 372e9)
    co = plan_transfers(inventory(model, (2, 1)),
                        world_layout(RefitMode.COLLOCATED, ParallelLayout(tp=2, ep=1), ParallelLayout(tp=1, ep=2)))
    busiest = max(max(v.bytes_in, v.bytes_out) for v in co.per_rank.values())
    local = max(v.bytes_local for v in co.per_rank.values())
    assert predict(co, link).bound_s == pytest.approx(max(busiest / 365e9, local / 2141e9))


def test_plan_with_ceilings_prints_and_stores_measured_figures(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, H200)
    d = plan_json(["config-4", "--refit-method", "nccl", "--ceilings", str(f)], capsys)
    m = d["predicted"]["model"]
    assert (m["intra_node_gbps"], m["intra_node_both_gbps"], m["local_copy_gbps"]) == (372.0, 365.0, 2141.0)
    assert m["source"].startswith(f"measured ceilings {f} (NVIDIA H200, 2026-11-29: nccl_one_way")
    assert d["predicted"]["bound_s"] == pytest.approx(d["per_rank"]["2"]["bytes_in"] / 372e9)
    assert main(["plan", "config-4", "--ceilings", str(f)]) == 0
    out = capsys.readouterr().out
    assert "Link model per GPU per direction: intra-node 396 GB/s (356.5 each way when both are busy)" in out
    assert f"Link figures from: measured ceilings {f}" in out.replace("\n", "")


def test_flags_win_over_the_file_and_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFITCTL_CEILINGS", str(write(tmp_path, H200)))
    m = plan_json(["config-4", "--refit-method", "nccl", "--intra-node-gbps", "100"], capsys)["predicted"]["model"]
    assert (m["intra_node_gbps"], m["intra_node_both_gbps"]) == (100.0, 365.0)
    assert m["source"].endswith("; flags --intra-node-gbps")
    monkeypatch.delenv("REFITCTL_CEILINGS")
    m = plan_json(["config-4", "--local-copy-gbps", "2000"], capsys)["predicted"]["model"]
    assert m["local_copy_gbps"] == 2000.0 and m["source"] == "flags --local-copy-gbps, defaults for the rest"
    assert plan_json(["config-4"], capsys)["predicted"]["model"]["source"].startswith("defaults (")


@pytest.mark.parametrize("data, line", [
    (None, "refitctl: error: ceilings file {f} not found: check the --ceilings path"),
    ("{broken", "refitctl: error: ceilings file {f} is not readable JSON (JSONDecodeError): "),
    ({"rows": []}, "refitctl: error: ceilings file {f} has no \"ceilings\" object: "),
    ({"ceilings": {"nccl_one_way": -3}}, "refitctl: error: ceilings file {f}: nccl_one_way must be a positive number "),
    ({"ceilings": {"nccl_one_way": "fast"}}, "refitctl: error: ceilings file {f}: nccl_one_way must be a positive "),
    ({"ceilings": {}}, "refitctl: error: ceilings file {f} holds none of local_copy, "),
])
def test_a_bad_ceilings_file_is_one_line_and_exit_2(data: object, line: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ceilings.json"
    if isinstance(data, str):
        f.write_text(data)
    elif data is not None:
        f.write_text(json.dumps(data))
    assert main(["plan", "config-4", "--ceilings", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line.format(f=f)) and err.count("\n") == 1


def test_the_benchmark_result_file_is_a_ceilings_file(tmp_path: Path) -> None:
    """benchmarks/gpu_bench.py writes ceilings in the shape --ceilings reads."""
    from benchmarks.gpu_bench import ceilings_record

    rec = ceilings_record("NVIDIA H200", "2026-11-29", 2, {"local_copy": 2141.0, "nccl_one_way": 372.0}, {})
    assert link_figures(json.loads(json.dumps(rec)), "nccl", "x").intra_node_gbps == 372.0
    with pytest.raises(ConfigError):
        link_figures({"ceilings": {"nccl_both_ways": 0}}, "nccl", "x")
