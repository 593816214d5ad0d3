"""One plan per run: a submit builds the inventory and the plan once, writes them into the run directory, and the
ranks load that plan instead of planning again (refit_core/planning/planfile.py, jobs/refit_job.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import refit_core.config as config_module
import refit_core.planning.plan as plan_module
from refit_core.planning.plan import plan_transfers as real_plan_transfers
from jobs.refit_job import load_config, load_plan
from orchestrator.cli import main
from orchestrator.configs import builtin_configs
from orchestrator.submission import executor
from refit_core.errors import RunDirError
from refit_core.paths import PLAN_FILE
from refit_core.planning.model import inventory
from refit_core.planning.planfile import plan_from_bytes, plan_to_bytes

SMALL = ("--num-layers", "2", "--hidden-size", "256", "--ffn-hidden-size", "512", "--moe-ffn-hidden-size", "128",
         "--num-experts", "4", "--vocab-size", "1024", "--num-attention-heads", "4")


@pytest.mark.parametrize("name", ["config-1", "collocated-4", "kimi-k2-small-fp8"])
def test_a_plan_survives_its_file_exactly(name: str) -> None:
    plan = builtin_configs()[name].plan()
    back = plan_from_bytes(plan_to_bytes(plan))
    assert back == plan and back.transfers == plan.transfers and back.gathers == plan.gathers
    assert back.per_rank == plan.per_rank and back.inventory.index == plan.inventory.index


def test_a_damaged_plan_file_is_one_line() -> None:
    data = plan_to_bytes(builtin_configs()["config-4"].plan())
    for bad, problem in ((data[:-8], "is truncated"), (b"\x00" + data, "is not a refitctl plan"),
                         (data.replace(b'"@":"ParamSpec"', b'"@":"Popen"', 1) if b'"@":"ParamSpec"' in data
                          else data[:40] + b"{" + data[41:], "is damaged")):
        with pytest.raises(RunDirError, match=problem) as e:
            plan_from_bytes(bad, "run/plan.bin")
        assert "\n" not in str(e.value) and str(e.value).startswith("run/plan.bin ")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = real_plan_transfers

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(config_module, "plan_transfers", counted)  # RunConfig.plan(), the one way in
    return calls


def test_one_submit_builds_the_inventory_and_the_plan_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From `refitctl submit` to the job: one inventory, one plan; the ranks' plan is the file's."""
    plans = _counting(monkeypatch)
    monkeypatch.setattr(executor, "submit_local", lambda specs, dirs, folder: [
        executor.JobRef("local", "1", str(folder), time.time(), None)])
    inventory.cache_clear()
    assert main(["submit", "config-4", "--cluster", "local", "--refit-method", "gloo", "--gpus", "3", "--detach",
                 "--runs-dir", str(tmp_path), *SMALL]) == 0
    assert len(plans) == 1 and inventory.cache_info().misses == 1
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    for module in (config_module, plan_module):
        monkeypatch.setattr(module, "plan_transfers", lambda *a, **k: pytest.fail("a rank planned again"))
    plan = load_plan(run_dir)
    cfg = load_config(run_dir)
    monkeypatch.setattr(config_module, "plan_transfers", real_plan_transfers)
    assert (run_dir / PLAN_FILE).is_file() and plan == cfg.plan() and len(plan.transfers) > 0
