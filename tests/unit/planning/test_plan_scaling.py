"""Planning cost grows linearly with the rank count (issue 25, item 2).

The plan once scanned every rank of a stage for every expert parameter and hashed the holder set of
a dense weight (every source rank) once per atom: quadratic, 44 s at 16,384 ranks and not done after
300 s at the 65,536-rank limit. What a user relies on: `plan`, `submit`, `sweep` and `render` of a
world at the limit answer in seconds. Measured here as the growth from 2,048 to 8,192 ranks (CPU time
of this process, so a busy machine slows both sides alike): linear is x4, quadratic x16.
"""

from __future__ import annotations

import time

from refit_core.config import RunConfig
from orchestrator.configs import builtin_configs, config_from_table

from conftest import SMALL_FLAGS


def _config(ep: int) -> RunConfig:
    """The tests' small model with EP experts, EP sources and EP destinations (one expert per rank)."""
    table = {**SMALL_FLAGS, "num_experts": ep, "expert_model_parallel_size": ep,
             "rl_inference_expert_model_parallel_size": ep, "gpus": 2 * ep, "refit_method": "gloo"}
    return config_from_table("scale", table, builtin_configs(), "test")


def _plan_cpu_s(ep: int) -> float:
    cfg = _config(ep)
    best = float("inf")
    for _ in range(2):
        t = time.process_time()
        cfg.validate()
        plan = cfg.plan()
        best = min(best, time.process_time() - t)
    assert plan.world.world_size == 2 * ep
    return best


def test_planning_is_linear_in_the_rank_count() -> None:
    small, large = _plan_cpu_s(1024), _plan_cpu_s(4096)
    assert large < 8 * small, f"2,048 ranks: {small:.2f} s, 8,192 ranks: {large:.2f} s (x{large / small:.1f})"
