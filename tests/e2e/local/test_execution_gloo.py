"""Every seed row refit on CPU with gloo, over exactly its world of processes, bitwise verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMALL_FLAGS
from jobs.local import run_locally
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.config import RunConfig
from refit_core.execution.transports.shared import PREFIX, SHM_DIR
from refit_core.records import load_rank_record, rank_files

SEED = ["config-1", "config-2", "config-3", "config-4", "config-5", "config-6",
        "collocated-1", "collocated-2", "collocated-3", "collocated-4"]


def small(name: str, **extra: object) -> RunConfig:
    cfg = apply_overrides(resolve(name), {**SMALL_FLAGS, "refit_method": "gloo", "num_benchmark_iterations": 2, **extra})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    cfg.validate()
    return cfg


def ranks(run_dir: Path) -> dict[int, dict]:
    return {int(p.stem.split("-")[1]): load_rank_record(p) for p in rank_files(run_dir)}


@pytest.mark.parametrize("name", SEED)
def test_seed_config_verifies(name: str, tmp_path: Path) -> None:
    cfg = small(name)
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"]
    assert res["timed_iterations"] == 2 and len(res["warmup_ms"]) == 1
    assert res["delivered_bytes"] > 0 and res["median_ms"] > 0
    recs = ranks(tmp_path)
    assert sorted(recs) == list(range(cfg.hardware.gpus))
    for r in cfg.world().destination.ranks:
        assert recs[r].verified and len(recs[r].iterations) == 3


def test_idle_ranks_join_and_do_nothing(tmp_path: Path) -> None:
    cfg = small("config-4").with_changes(gpus=5)  # 3 used, ranks 3-4 idle
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * 5 and res["verified"]
    recs = ranks(tmp_path)
    assert recs[3].role == recs[4].role == "idle"
    assert recs[3].iterations == [] and recs[3].source_bytes is None


def test_pipeline_parallel_source(tmp_path: Path) -> None:
    cfg = small("config-4", pipeline_model_parallel_size=2)  # source TP=2 x PP=2 -> TP=1
    assert cfg.world().describe().splitlines()[1] == "Source ranks: 0-3 (TP=2, PP=2, EP=1)"
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * 5 and res["verified"]


def test_corrupted_byte_is_caught_and_named(tmp_path: Path) -> None:
    cfg = small("config-4")
    codes, res = run_locally(cfg, tmp_path, timeout_s=240, grace_s=20,
                             extra_env={"REFITCTL_FAULT": "corrupt:rank=2:iteration=1"})
    assert codes[2] != 0
    rec = ranks(tmp_path)[2]
    assert rec.verified is False
    assert rec.error.startswith("VerificationError: rank 2: ") or rec.error.startswith("rank 2: ")
    assert "wrong at global index (" in rec.error
    assert len(rec.iterations) == 1  # the warm-up passed; the corrupted iteration is not reported as a time


def test_fp32_router_expert_bias_moves_with_the_bf16_weights(tmp_path: Path) -> None:
    cfg = small("collocated-4", moe_router_enable_expert_bias=True)  # EP 2 -> 1: the bias is replicated
    assert any(p.name.endswith("mlp.router.expert_bias") and p.dtype == "float32" for p in cfg.inventory().params)
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus and res["verified"]


@pytest.mark.parametrize("name,env", [
    ("config-4", {"REFITCTL_STAGED_DIRECT_MIN_BYTES": "1024"}),
    ("collocated-4", {"REFITCTL_STAGED_DIRECT_MIN_BYTES": "0"}),
    ("collocated-4", {"REFITCTL_STAGED_ZERO_COPY": "0"}),
])
def test_zero_copy_and_all_staged_paths_verify(name: str, env: dict[str, str], tmp_path: Path) -> None:
    """The staged transport with zero-copy runs (direct isend/irecv on shard buffer views, ordered
    per pair on both ends) and with it switched off: every destination byte verified, and each
    rank's record says which path ran and where its time went. The variables are read where the run is
    resolved (RunConfig.with_environment) and reach the ranks as config fields."""
    cfg = small(name, gloo_shared_memory="off").with_environment(env)  # the socket path
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"]
    recs = ranks(tmp_path)
    on = env.get("REFITCTL_STAGED_ZERO_COPY") != "0"
    moved = [r for r in recs.values() if r.transport["direct_bytes"] + r.transport["staged_bytes"]]
    assert moved and all(r.transport["zero_copy"] is on for r in moved)
    if on:
        assert any(r.transport["direct_ops"] for r in moved)
    else:
        assert all(r.transport["direct_ops"] == 0 and r.transport["staged_bytes"] for r in moved)
    phases = recs[0].iterations[-1].phases_ms
    assert set(phases) <= {"issue", "pack", "local", "transfer", "unpack", "direct"} and phases


@pytest.mark.parametrize("name", ["config-6", "collocated-1"])
def test_shared_memory_staging_verifies_over_rounds_and_leaves_no_file(name: str, tmp_path: Path) -> None:
    """gloo ranks of one host stage through /dev/shm (transports/shared.py): with a 1 MiB bucket the ranks
    have different numbers of rounds (every rank must meet every round's barriers), every byte still
    verifies, each record says the shared path ran, and no staging file outlives the run."""
    before = set(SHM_DIR.glob(f"{PREFIX}*"))
    cfg = small(name, refit_bucket_size="1MiB", gloo_shared_memory="staged")
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"]
    recs = ranks(tmp_path)
    moved = [r for r in recs.values() if r.transport.get("staged_bytes")]
    assert moved and all(r.transport["shared_memory"] is True and r.transport["cross_memory"] is False and
                         r.transport["direct_ops"] == 0 for r in moved)
    assert len({r.transport["rounds"] for r in moved}) == 1 and moved[0].transport["rounds"] > 1
    assert set(recs[0].iterations[-1].phases_ms) <= {"pack", "local", "transfer", "unpack"}
    assert set(SHM_DIR.glob(f"{PREFIX}*")) == before


@pytest.mark.parametrize("name", ["config-2", "collocated-1", "collocated-2"])
def test_cross_memory_reads_verify_and_report_the_path(name: str, tmp_path: Path) -> None:
    """--gloo-shared-memory read: each receiver reads every block it is due straight from its senders' source
    shards (transports/cma.py; strided blocks a row per segment, coalesced where contiguous), one barrier
    before and one after: every byte verified, nothing staged, no file in /dev/shm."""
    before = set(SHM_DIR.glob(f"{PREFIX}*"))
    cfg = small(name, gloo_shared_memory="read")
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * cfg.hardware.gpus, (tmp_path / "logs" / "rank-0.log").read_text()
    assert res["verified"] and res["complete"]
    recs = ranks(tmp_path)
    assert all(r.transport["cross_memory"] is True and r.transport["staged_bytes"] == 0 for r in recs.values())
    received = [r for r in recs.values() if r.iterations and r.iterations[-1].bytes_in]
    assert received and all("read" in r.iterations[-1].phases_ms for r in received)
    assert set(SHM_DIR.glob(f"{PREFIX}*")) == before
