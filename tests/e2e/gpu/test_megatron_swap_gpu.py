"""refit_core.megatron.swap_model_weights on GPUs: NCCL, one rank per GPU, models' parameters on the GPU.

The same oracle as tests/e2e/local/test_megatron_swap.py (every destination parameter bitwise equal
to the source's global slice, first call and a cached later one). One GPU: the collocated TP1 -> TP1
refit (local copies only); two GPUs: the 2-rank layouts of issue 24, TP2 -> TP1/EP2 and EP2 -> EP1
collocated, TP1 -> TP1 non-collocated. Skipped without enough CUDA GPUs (CI has none).
"""

from __future__ import annotations

import pytest
import torch

from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout, RefitMode
from refit_core.planning.model import ModelSpec

mb = pytest.importorskip("refit_core.peers.megatron_build")
pytestmark = pytest.mark.gpu
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
MODEL = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=64,
                  num_experts=4, moe_shared_expert_intermediate_size=32, seq_length=16, vocab_size=1000,
                  disable_bias_linear=True, swiglu=True, untie_embeddings_and_output_weights=True)
CASES = {
    "tp1-tp1-collocated": (ParallelLayout(), ParallelLayout(), "collocated"),
    "tp2-tp1ep2-collocated": (ParallelLayout(tp=2), ParallelLayout(ep=2), "collocated"),
    "ep2-ep1-collocated": (ParallelLayout(ep=2), ParallelLayout(), "collocated"),
    "tp1-tp1-non-collocated": (ParallelLayout(), ParallelLayout(), "non-collocated"),
}


def gpu_rank(cfg: RunConfig) -> list[dict]:
    """Both models on this rank's GPU, then two swaps by `cfg`'s method, each checked against the oracle."""
    from refit_core.megatron import swap_model_weights

    models = mb.build_models(cfg)
    for m in (models.source, models.destination):
        if m is not None:
            m.cuda()
    mb.fill_source(cfg, models)
    out = []
    for _ in range(2):
        mb.poison_destination(models)
        swap_model_weights(models.source_arg, models.destination_arg, cfg.run.method)
        torch.cuda.synchronize()
        out.append(mb.destination_mismatches(cfg, models))
    return out


@pytest.mark.skipif(mb.megatron_core() is None, reason="megatron-core not installed")
@pytest.mark.parametrize("name", list(CASES))
def test_swap_on_gpus_is_bitwise(name: str) -> None:
    src, dst, mode = CASES[name]
    cfg = RunConfig.of("gpu-swap", MODEL, src, dst, RefitMode(mode), method="nccl", iterations=1, gpus=64)
    cfg = cfg.with_changes(gpus=cfg.world().gpus_used)
    if GPUS < cfg.hardware.gpus:
        pytest.skip(f"needs {cfg.hardware.gpus} CUDA GPU(s), {GPUS} here")
    res = mb.run_ranks(cfg.hardware.gpus, gpu_rank, cfg, backend="nccl")
    assert all(r == [{}, {}] for r in res)
