"""refit_core.library with --refit-method nvshmem on the caller's GPU tensors: staged through a bounded
buffer in NVSHMEM's symmetric heap (transports/shared.py + nvshmem.HeapStages), several PEs on one GPU.

What a user relies on: after each call every destination tensor holds exactly the source's bytes (checked
against refitctl's deterministic values, apart from the API's own digest check), the caller's tensors stay
where they are (same data pointers), and the heap holds one bounded staging buffer, not the model; the same
through `refit_core.megatron.swap_model_weights(..., "nvshmem")` on Megatron-Core models. Run in its own
pytest process (the ranks are forked; the parent must not have started CUDA). Skipped without a GPU and
nvshmem4py (CI has neither).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from refit_core.library import Refit, refit_config
from helpers import ddp_like
from refit_core.library.local import run_local, synthetic_shards
from refit_core.planning.layout import ParallelLayout
from refit_core.planning.model import ModelSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    importlib.util.find_spec("nvshmem") is None or not torch.cuda.is_available(), reason="needs a CUDA GPU and nvshmem4py")]
TINY = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=64,
                 num_experts=4, moe_shared_expert_intermediate_size=32, seq_length=16, vocab_size=500,
                 disable_bias_linear=True, swiglu=True, untie_embeddings_and_output_weights=True)
SMALL = dataclasses.replace(TINY, hidden_size=256, ffn_hidden_size=256, vocab_size=2000)  # 6-12 rounds at 1 MiB


def _shards(cfg, role: str, values: bool) -> dict[str, torch.Tensor] | None:
    """This rank's tensors of `role` on GPU 0, as views of one buffer in reversed order (as DDP keeps them)."""
    shards = synthetic_shards(cfg, role, values)
    return ddp_like(shards, gap=0, device="cuda:0") if shards is not None else None


def _rank(cfg) -> dict:
    torch.cuda.set_device(0)
    src = _shards(cfg, "source", True)
    dst = _shards(cfg, "destination", False)
    ptrs = {k: t.data_ptr() for k, t in (dst or {}).items()}
    refit = Refit.build(cfg, src, dst)
    out = {"checked": 0, "wrong": [], "extra": refit.extra_bytes, "info": refit.transport.info}
    want = _shards(cfg, "destination", True)
    for _ in range(2):
        for t in (dst or {}).values():
            t.fill_(float("nan"))
        out["checked"] += refit().transfers_checked
        torch.cuda.synchronize()
        out["wrong"] += [k for k in (dst or {}) if not torch.equal(dst[k].view(torch.int16), want[k].view(torch.int16))]
    out["same_pointers"] = ptrs == {k: t.data_ptr() for k, t in (dst or {}).items()}
    refit.close()
    return out


@pytest.mark.parametrize("src,dst,world,collocated", [
    (ParallelLayout(tp=2), ParallelLayout(ep=2), 4, False),
    (ParallelLayout(tp=2), ParallelLayout(ep=2), 2, True),
], ids=["tp2-ep2-non-collocated", "tp2-ep2-collocated"])
def test_nvshmem_refits_the_callers_gpu_tensors_through_bounded_heap_staging(src, dst, world, collocated) -> None:
    cfg = refit_config(SMALL, src, dst, world_size=world, collocated=collocated, method="nvshmem", bucket_bytes=1 << 20)
    res = run_local(world, _rank, cfg, timeout_s=240)
    assert all(r["wrong"] == [] and r["same_pointers"] for r in res), res
    assert sum(r["checked"] for r in res) > 0
    assert all(r["info"]["shared_memory"] is True for r in res)
    # the heap holds one staging buffer per PE, bounded by the bucket (1 MiB here: several rounds), not the model
    assert all(r["extra"] <= 1 << 20 for r in res) and max(r["info"]["rounds"] for r in res) > 1


def test_megatron_swap_over_nvshmem_pes_on_one_gpu_is_bitwise() -> None:
    mb = pytest.importorskip("refit_core.peers.megatron_build")
    if mb.megatron_core() is None:
        pytest.skip("megatron-core not installed")
    from test_megatron_swap_gpu import gpu_rank  # every PE on GPU 0, the current device of a forked rank

    from refit_core.config import RunConfig
    from refit_core.planning.layout import RefitMode

    cfg = RunConfig.of("gpu-swap-nvshmem", TINY, ParallelLayout(tp=2), ParallelLayout(ep=2), RefitMode("non-collocated"),
                    method="nvshmem", iterations=1, gpus=4)
    res = mb.run_ranks(cfg.hardware.gpus, gpu_rank, cfg, backend="gloo")
    assert all(r == [{}, {}] for r in res), res
