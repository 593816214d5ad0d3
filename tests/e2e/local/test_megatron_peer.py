"""Megatron-Core's own refit as a refitctl method (refit_core/peers/megatron_transport.py).

What a user relies on: `refitctl submit X --refit-method megatron-gloo` runs Megatron-Core's
`swap_model_weights` under refitctl's timing and bitwise verification, says it patched Megatron,
and reports the first refit (Megatron's plan built inside it) apart from the steady state;
`megatron-nvshmem` refuses before anything is launched. Small models, CPU, gloo.
"""

from __future__ import annotations

import functools

import json
from pathlib import Path

import pytest

import helpers
from conftest import SMALL_FLAGS
from helpers import SMALL
from orchestrator.cli import main

mb = pytest.importorskip("refit_core.peers.megatron_build")
needs_megatron = pytest.mark.skipif(mb.megatron_core() is None, reason="megatron-core not installed ('refitctl[megatron]')")


refitctl = functools.partial(helpers.refitctl, env={"COLUMNS": "200"})  # tables wide enough to read


def test_megatron_nvshmem_refuses_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "collocated-4", "--refit-method", "megatron-nvshmem", "--cluster", "local"]) == 2
    err = capsys.readouterr().err
    assert err == ("refitctl: error: --refit-method megatron-nvshmem cannot run: megatron-core 0.16.1's NVSHMEM copy "
                   "service imports cuda.core.experimental and needs kernels/chunked_kernel.cu, which its wheel (and "
                   "sdist) do not ship: use megatron-nccl\n")


@needs_megatron
def test_submit_collocated_4_megatron_gloo_verifies_and_reports_the_patch(tmp_path: Path) -> None:
    p = refitctl("submit", "collocated-4", "--refit-method", "megatron-gloo", "--cluster", "local", "--gpus", "4",
                 "--num-benchmark-iterations", "2", "--poll", "0.5", *SMALL, runs=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "COMPLETED · verified · first " in p.stdout
    (run,) = tmp_path.iterdir()
    res = json.loads((run / "results.json").read_text())
    assert res["verified"] and res["complete"] and res["timed_iterations"] == 2
    t = res["transport"]
    assert (t["peer"], t["backend"], t["patched"]) == ("megatron-core", "gloo", True)
    assert t["patch"].startswith("megatron_patch.patch_expert_metadata")
    # the fp32 torch norms and position embedding of a bare GPTModel, moved as refitctl's bf16
    assert t["cast_to_bf16"] > 0
    # the first refit builds Megatron's plan (its own phase); later ones reuse it
    its = res["iterations"]
    assert res["first_ms"] == its[0]["time_ms"] and its[0]["warmup"]
    assert set(its[0]["phases_ms"]) == {"plan", "swap"} and all(set(i["phases_ms"]) == {"swap"} for i in its[1:])
    # same plan bytes as refitctl's gloo: the engine verified every destination byte it delivers
    plan = json.loads((run / "plan.json").read_text())
    assert res["delivered_bytes"] == plan["network_bytes"] + plan["local_bytes"] > 0


@needs_megatron
def test_non_collocated_config_4_megatron_gloo_verifies(tmp_path: Path) -> None:
    """config-4 (TP2 -> TP1, 3 ranks): an EP=1, TP>1 source, which Megatron-Core as shipped cannot plan."""
    from jobs.local import run_locally
    from orchestrator.configs import resolve
    from orchestrator.configs.flags import apply_overrides

    cfg = apply_overrides(resolve("config-4"), {**SMALL_FLAGS, "refit_method": "megatron-gloo",
                                                "num_benchmark_iterations": 1})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    codes, res = run_locally(cfg, tmp_path / "run", timeout_s=240)
    assert codes == [0, 0, 0], (tmp_path / "run" / "logs" / "rank-00000.log").read_text()[-2000:]
    assert res is not None and res["verified"] and res["transport"]["patched"] is True
    from refit_core.records import load_rank_record, rank_files

    ranks = [load_rank_record(p) for p in rank_files(tmp_path / "run")]
    assert [r.role for r in ranks] == ["source", "source", "destination"]
    assert all(r.verified for r in ranks) and ranks[2].destination_bytes > 0


def test_megatron_gloo_runs_on_cpu_and_megatron_nccl_falls_back_to_it() -> None:
    from orchestrator.configs import resolve
    from orchestrator.submission.runspec import effective_config
    from refit_core.errors import ConfigError

    cpu = resolve("collocated-4").with_changes(method="megatron-gloo")
    assert effective_config(cpu, method_explicit=True, gpus_available=False) == (cpu, None)
    gpu = cpu.with_changes(method="megatron-nccl")
    fallback, note = effective_config(gpu, method_explicit=False, gpus_available=False)
    assert fallback.run.method == "megatron-gloo" and "megatron-nccl" in note
    with pytest.raises(ConfigError, match="--refit-method megatron-nccl needs CUDA GPUs"):
        effective_config(gpu, method_explicit=True, gpus_available=False)
