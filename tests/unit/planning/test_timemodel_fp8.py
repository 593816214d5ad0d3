"""The time model's FP8 quantiser (issue 22): what each source GPU quantises, how the two passes
add to the links (overlapped for two-sided transports, before them for one-sided), and the
measured figures a ceilings file brings."""

from __future__ import annotations

import pytest

from conftest import SMALL_FLAGS
from orchestrator.configs import resolve
from orchestrator.configs.flags import apply_overrides
from refit_core.planning.storage import rank_storage
from refit_core.planning.ceilings import link_figures
from refit_core.planning.precision import destination_inventory
from refit_core.planning.timemodel import AMAX_GBPS, QUANTISE_GBPS, LinkModel, gpu_loads, predict


def _cfg(method: str = "nccl", precision: str = "fp8"):
    return apply_overrides(resolve("config-4"), {**SMALL_FLAGS, "rl_inference_precision": precision,
                                                 "refit_method": method})


def test_each_source_quantises_what_it_holds_and_what_it_moves() -> None:
    cfg = _cfg()
    plan = cfg.plan()
    weights = {wi for wi, _ in destination_inventory(plan.inventory, "fp8").scales}
    loads = gpu_loads(plan, LinkModel())
    src = plan.world.source
    for r in src.ranks:
        held = sum(s.nbytes for s in rank_storage(plan.inventory, src.layout, src.local(r)).slots if s.param in weights)
        moved = sum(2 * plan.nbytes(t) for t in plan.transfers if t.src == r and t.param in weights)
        assert (loads[r].amax_read, loads[r].quantise_read) == (held, moved) and held > 0
    assert all(g.amax_read == g.quantise_read == 0 for g in loads if g.rank not in src.ranks)
    assert all(g.amax_read == 0 for g in gpu_loads(_cfg(precision="bf16").plan(), LinkModel()))


@pytest.mark.parametrize("method", ["nccl", "nvshmem"])
def test_a_slow_quantiser_bounds_the_refit_overlapped_or_not(method: str) -> None:
    cfg = _cfg(method)
    plan = cfg.plan()
    fast = predict(plan, cfg.link_model())
    slow_link = cfg.with_changes(quantise_gbps=0.01, amax_gbps=0.02).link_model()
    slow = predict(plan, slow_link)
    assert slow.bottleneck_link == "quantise" and slow.bound_s > 100 * fast.bound_s
    g = max(slow.loads, key=lambda x: x.scales_s(slow_link) + x.quantise_s(slow_link))
    t = g.link_times(slow_link)
    links = max(t["intra-node in"], t["intra-node out"]) + max(t["inter-node in"], t["inter-node out"]) + t["local copy"]
    scales = g.amax_read / 0.02e9
    if method == "nccl":  # two-sided: each bucket quantised while the previous one is on the wire
        assert slow_link.quantise_overlaps and g.serial_s(slow_link) == pytest.approx(
            scales + max(links, g.quantise_read / 0.01e9))
    else:  # one-sided: the whole send image first
        assert not slow_link.quantise_overlaps and g.serial_s(slow_link) == pytest.approx(
            scales + g.amax_read / 0.01e9 + links)


def test_defaults_are_hbm_assumptions_and_a_ceilings_file_replaces_them() -> None:
    cfg = _cfg()
    assert (cfg.hardware.quantise_gbps, cfg.hardware.amax_gbps) == (QUANTISE_GBPS, AMAX_GBPS) == (2000.0, 3000.0)
    data = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-06",
            "ceilings": {"local_copy": 1496.0, "quantise": 1234.5, "quantise_amax": 2345.5}}
    fig = link_figures(data, "nccl", "f.json")
    link = cfg.with_ceilings(fig).link_model()
    assert (link.quantise_gbps, link.amax_gbps, link.local_copy_gbps) == (1234.5, 2345.5, 1496.0)
    assert "quantise, quantise_amax" in link.source
