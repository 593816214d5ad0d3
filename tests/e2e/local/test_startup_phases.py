"""Start-up is visible: each rank's record says which phase it is in and since when, and the live view shows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SMALL_FLAGS
from jobs.local import run_locally
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from orchestrator.state.rundir import Progress, RankProgress
from orchestrator.views.liveview import rank_status, starting_phases
from refit_core.execution import weights
from refit_core.planning.storage import rank_storage
from refit_core.execution.watchdog import process_start_time, record_phase
from refit_core.records import RankRecord, RankRecordWriter, load_rank_record, rank_path

# What an active gloo rank goes through, in order (the transport's set-up phase is named by the transport).
ACTIVE_PHASES = ["starting Python", "start-up (imports, config)", "importing torch", "CUDA device set-up",
                 "process-group init (gloo)", "loading the plan", "weight fill", "set-up barrier (every rank's weights filled)",
                 "warm-up", "iterations", "final barrier (every active rank done)", "process-group teardown"]


def test_every_rank_record_carries_its_phases_with_their_wall_times(tmp_path: Path) -> None:
    cfg = apply_overrides(resolve("config-4"), {**SMALL_FLAGS, "refit_method": "gloo", "num_benchmark_iterations": 2})
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used + 1)  # 3 active ranks and one idle
    codes, res = run_locally(cfg, tmp_path, timeout_s=240)
    assert codes == [0] * 4 and res is not None and res["verified"]
    for r in range(3):
        rec = load_rank_record(rank_path(tmp_path, r))
        names = [n for n, _ in rec.phases]
        assert [n for n in names if n in ACTIVE_PHASES] == ACTIVE_PHASES, names
        assert not any(n.startswith("iteration ") for n in names)  # iterations are one phase, not one each
        times = [t for _, t in rec.phases]
        assert times == sorted(times) and rec.phase == names[-1] and rec.phase_since == times[-1]
        assert 0 <= times[names.index("iterations")] - times[0] < 240
    idle = load_rank_record(rank_path(tmp_path, 3))
    assert [n for n, _ in idle.phases] == ["starting Python", "start-up (imports, config)"]  # no torch, no group


def test_a_phase_is_one_appended_line_and_a_repeated_phase_none(tmp_path: Path) -> None:
    w = RankRecordWriter(tmp_path / "r.jsonl", started=100.0)
    w.save(RankRecord(0))
    w.enter_phase("weight fill", now=101.5)
    w.enter_phase("weight fill", now=102.0)
    w.close()
    lines = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert lines[0]["phase"] == "starting Python" and lines[0]["phase_since"] == 100.0
    assert lines[1:] == [{"kind": "update", "fields": {"phase": "weight fill", "phase_since": 101.5,
                                                       "phases": [["starting Python", 100.0], ["weight fill", 101.5]]}}]


@pytest.mark.parametrize("armed, recorded", [("iteration -1", "warm-up"), ("iteration 0", "iterations"),
                                             ("iteration 12", "iterations"), ("weight fill", "weight fill")])
def test_iterations_are_recorded_as_one_phase(armed: str, recorded: str) -> None:
    assert record_phase(armed) == recorded


def test_process_start_time_is_before_now_and_recent() -> None:
    import time

    assert 0 <= time.time() - process_start_time() < 3600


def _rank(r: int, phase: str | None, since: float | None, complete: bool = False) -> RankProgress:
    return RankProgress(r, "source", 0, (), complete, complete, None, 0.0, phase, since)


def test_live_view_says_where_the_ranks_are_while_starting() -> None:
    p = Progress((_rank(0, "importing torch", 97.9), _rank(1, "weight fill", 99.0), _rank(2, "weight fill", 98.5),
                  _rank(3, "start-up (imports, config)", 99.5, complete=True)), active=3, warmup=1, iterations=3)
    assert starting_phases(p, now=100.0) == "1 in importing torch 2.1 s, 2 in weight fill 1.5 s, 1 idle"
    assert rank_status(p.ranks[1], 3, now=100.0).plain == "weight fill 1.0 s"
    assert rank_status(_rank(0, "iterations", 90.0), 3, now=100.0).plain == "running"  # the done column counts these
    assert rank_status(p.ranks[3], 3).plain == "idle"


def test_filled_values_are_the_documented_function_of_the_global_index() -> None:
    """(A[r] xor B[c]) - 128, exact in every dtype: the weights every run fills and verifies."""
    cfg = apply_overrides(resolve("config-1"), {**SMALL_FLAGS, "refit_method": "gloo"})
    inv, lay = cfg.inventory(), cfg.world().source.layout
    st = rank_storage(inv, lay, 1)
    buf = torch.full((st.nbytes,), 0xFF, dtype=torch.uint8)
    weights.fill(buf, st, inv)
    for slot in st.slots[:12]:
        p = inv.params[slot.param]
        got = weights.param_view(buf, slot, p.dtype)
        rows, cols = weights._global_axes(p, slot, buf.device)
        a = weights._hash8(rows, 2 * slot.param + 1).to(torch.int16)
        want = a if cols is None else a[:, None] ^ weights._hash8(cols, 2 * slot.param + 2).to(torch.int16)[None, :]
        assert torch.equal(got.float(), (want - 128).float()), p.name
    weights.verify(buf, st, inv, 1)
