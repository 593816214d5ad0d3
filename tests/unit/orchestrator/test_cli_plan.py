"""`refitctl plan`: the printout users read, the JSON scripts read, and one-line errors."""

from __future__ import annotations

import json

import pytest

from orchestrator.cli import main


def test_plan_json_has_every_documented_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "config-1", "--json", "--check"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["world_size"] == 8 and d["gpus_used"] == 6
    assert d["source_ranks"] == [0, 1, 2, 3] and d["destination_ranks"] == [4, 5] and d["idle_ranks"] == [6, 7]
    assert d["model"]["parameters"] == 406_669_312 and d["model"]["bytes"] == 2 * 406_669_312
    assert d["model"]["expert_bytes"] == 4 * 16 * 2 * 2688 * 1024 * 2
    assert {"src", "dst", "bytes", "local"} <= set(d["pairs"][0])
    assert sum(p["bytes"] for p in d["pairs"]) == sum(v["bytes_in"] for v in d["per_rank"].values())
    assert set(d["per_rank"]) == {str(r) for r in range(8)}
    assert {k: d["per_rank"]["6"][k] for k in ("bytes_in", "bytes_out", "bytes_local")} == \
        {"bytes_in": 0, "bytes_out": 0, "bytes_local": 0}
    assert d["balance"]["ratio"] <= 1.10


def test_plan_prints_the_seed_layout_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "collocated-3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("World size: 8 (using 8 GPUs)\nSource ranks: 0-7 (TP=4, PP=1, EP=2)\n"
                          "Destination ranks: 0-3 (TP=4, PP=1, EP=1)\n")
    assert "Per-rank bytes" in out and "Source -> destination bytes" in out \
        and "Balance intra-node (NVLink, node-aware)" in out and "Balance inter-node (NIC, node-aware)" in out


def test_seed_flags_instead_of_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--tensor-model-parallel-size", "4", "--expert-model-parallel-size", "1",
            "--rl-inference-tensor-model-parallel-size", "2", "--rl-inference-expert-model-parallel-size", "1",
            "--refit-mode", "non-collocated", "--refit-method", "nvshmem", "--num-layers", "4", "--hidden-size", "1024",
            "--num-attention-heads", "8", "--seq-length", "512", "--max-position-embeddings", "512",
            "--micro-batch-size", "1", "--num-experts", "16", "--moe-router-topk", "2",
            "--moe-shared-expert-intermediate-size", "512", "--ffn-hidden-size", "2688", "--num-benchmark-iterations", "3",
            "--json"]
    assert main(argv) == 0
    by_flags = json.loads(capsys.readouterr().out)
    assert main(["plan", "config-3", "--json"]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_flags["pairs"] == by_name["pairs"] and by_flags["model"] == by_name["model"]


@pytest.mark.parametrize("argv, line", [
    (["plan", "config-7"], "refitctl: error: unknown config 'config-7': use one of config-1, "),
    (["plan", "config-1", "--tensor-model-parallel-size", "8", "--expert-model-parallel-size", "1",
      "--rl-inference-tensor-model-parallel-size", "4"], "refitctl: error: needs 12 GPUs (8 + 4) but only 8 available: "),
    (["plan", "config-1", "--expert-tensor-parallel-size", "2"], "refitctl: error: MoE needs --expert-tensor-parallel-size 1"),
    (["plan", "config-1", "--num-experts", "5"], "refitctl: error: source: --num-experts 5 is not divisible by "
                                                  "--expert-model-parallel-size 2: choose sizes that divide"),
    (["plan", "config-1", "--hidden-size", "abc"], "refitctl: error: command line: --hidden-size 'abc' is not an integer"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["plan", "submit"])
def test_help_lists_every_flag_in_its_group(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.configs.flags import FLAGS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    groups = {g: out.index(title) for g, title in (("model", "\nmodel ("), ("source", "\nsource layout"),
                                                    ("destination", "\ndestination layout"), ("run", "\nrun:"))}
    for f in FLAGS:
        at = out.index(f"\n  {f.flag}")  # listed with a help line, not only in the usage
        assert at > groups[f.target], f.flag
    assert "--num-layers V        transformer layers (default: 4)" in out
