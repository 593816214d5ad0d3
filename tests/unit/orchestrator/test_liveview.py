"""What the live view and results print: figures that agree with each other and say what they count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.views.liveview import delivered_text, predicted_line
from refit_core.numbers import plain_number


@pytest.mark.parametrize("v, text", [(0.01234, "0.0123"), (4.567, "4.57"), (78.9, "78.9"), (789.4, "789"),
                                     (1140.2, "1,140"), (52312.0, "52,312"), (0, "0")])
def test_chart_numbers_never_use_scientific_notation(v: float, text: str) -> None:
    assert plain_number(v) == text


def test_nothing_delivered_when_no_iteration_finished() -> None:
    assert delivered_text({"delivered_bytes": 82_339_840, "iterations": []}) == "nothing delivered"
    assert delivered_text({"delivered_bytes": 82_339_840}) == "nothing delivered"
    one = {"iteration": -1, "warmup": True, "time_ms": 1.0}
    assert delivered_text({"delivered_bytes": 82_339_840, "iterations": [one]}) == "78.53 MiB delivered per iteration"


@pytest.mark.parametrize("method, shown", [("gloo", False), ("nvshmem", True), ("nccl", True)])
def test_link_model_compared_only_for_gpu_methods(method: str, shown: bool, tmp_path: Path) -> None:
    (tmp_path / "plan.json").write_text(json.dumps({"method": method, "predicted": {"time_s": 0.002, "bound_s": 0.001}}))
    line = predicted_line(tmp_path, {"median_ms": 4.0})
    if shown:
        assert line is not None and line.plain.endswith("measured median 4.000 ms = 2.00x predicted")
    else:
        assert line is None


def test_header_and_rank_rows_count_the_same_iterations() -> None:
    from orchestrator.state.rundir import Progress, RankProgress

    def rank(r: int, done: int) -> RankProgress:
        return RankProgress(r, "source", done, tuple(1.0 for _ in range(done)), False, False, None, 0.0)

    p = Progress((rank(0, 3), rank(1, 2)), active=2, warmup=1, iterations=8)
    assert p.phase() == "iteration 1/8"  # every active rank finished the warm-up and one timed iteration
    assert [p.count(r.done) for r in p.ranks] == ["2/8", "1/8"]
    early = Progress((rank(0, 0), rank(1, 1)), active=2, warmup=2, iterations=8)
    assert early.phase() == "warm-up 0/2" and early.count(1) == "warm-up 1/2"
