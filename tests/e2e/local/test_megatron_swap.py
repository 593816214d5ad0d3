"""refit_core.megatron.swap_model_weights: Megatron-Core's signature, refitctl's refit, the oracle's answer.

Real Megatron-Core GPTModels (refit_core/peers/megatron_build.py) on every layout change the oracle
(test_megatron_oracle.py) covers: TP, EP and PP changes, the collocated TP<->EP swap, SwiGLU, GQA,
an untied output layer and a padded vocabulary. Sources hold refitctl's deterministic values,
destinations are poisoned (NaN); after each call every destination parameter must equal the
source's global slice bit for bit (mb.destination_mismatches), the first call (plan + bind) and a
later one (cached, bytes only). Ranks without a model of a role pass Megatron's parameter-less
stand-in, as an RL loop on Megatron-Core 0.16.1 does. CPU, gloo, one process per rank.
"""

from __future__ import annotations

import pytest

from refit_core.config import RunConfig
from refit_core.planning.layout import ParallelLayout

mb = pytest.importorskip("refit_core.peers.megatron_build")
if mb.megatron_core() is None:
    pytest.skip("megatron-core not installed (pip install 'refitctl[megatron]')", allow_module_level=True)

from test_megatron_oracle import case  # noqa: E402  (the oracle's tiny model: every kind of weight)


def swap_rank(cfg: RunConfig, chunks: bool, ddp: bool = False) -> dict:
    from refit_core.megatron import swap_model_weights

    models = mb.build_models(cfg)
    buffers = [mb.contiguous_like_ddp(m) for m in (models.source, models.destination) if ddp and m is not None]
    mb.fill_source(cfg, models)
    src, dst = models.source_arg, models.destination_arg
    if chunks:
        src, dst = [src], [dst]
    out = {"mismatches": [], "checked": []}
    for _ in range(2):
        mb.poison_destination(models)
        stats = swap_model_weights(src, dst, "gloo")
        out["mismatches"].append(mb.destination_mismatches(cfg, models))
        out["checked"].append(stats.transfers_checked)
    refit = getattr(models.destination_arg, "_refitctl_refit", None)
    out["calls"] = refit.calls if refit is not None else None
    out["in_place"] = [b.in_place for b in (refit.source, refit.destination) if b is not None] if refit else None
    out["still_ddp"] = all(p.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
                           for m, b in zip([m for m in (models.source, models.destination) if m is not None], buffers)
                           for p in m.parameters())
    return out


def run(cfg: RunConfig, chunks: bool = False, ddp: bool = False) -> list[dict]:
    res = mb.run_ranks(cfg.hardware.gpus, swap_rank, cfg, chunks, ddp)
    for r in res:
        assert r["mismatches"] == [{}, {}]
    dst = cfg.world().destination
    assert [r["calls"] for r in res] == [2 if dst.local(k) is not None else None for k in range(cfg.hardware.gpus)]
    assert sum(sum(r["checked"]) for r in res) > 0
    return res


def test_tp_change_4_to_2_swiglu_gqa_untied_padded_vocab() -> None:
    cfg = case(ParallelLayout(tp=4), ParallelLayout(tp=2), swiglu=True, untie_embeddings_and_output_weights=True)
    assert cfg.inventory().vocab == 1024
    run(cfg, chunks=True)


def test_ep_change_2_to_1_non_collocated() -> None:
    run(case(ParallelLayout(ep=2), ParallelLayout(ep=1), mode="non-collocated"))


def test_ep_change_1_to_2() -> None:
    run(case(ParallelLayout(ep=1), ParallelLayout(ep=2)))


def test_collocated_1_tp_ep_swap() -> None:
    run(case(ParallelLayout(tp=4, ep=2), ParallelLayout(tp=2, ep=4), swiglu=True))


def test_pipeline_parallel_source() -> None:
    run(case(ParallelLayout(ep=2, pp=2), ParallelLayout(tp=2, ep=2), swiglu=True,
             untie_embeddings_and_output_weights=True))


def test_models_in_ddp_buffers_are_refit_in_place() -> None:
    """Both models' parameters in one buffer each, in DDP's order (reverse, padded): refit where they
    live (no adoption, the buffers stay theirs), every peer told the layout in the one describe gather."""
    res = run(case(ParallelLayout(tp=2), ParallelLayout(ep=2), swiglu=True), ddp=True)
    assert [r["in_place"] for r in res] == [[True, True]] * 2 and all(r["still_ddp"] for r in res)
    res = run(case(ParallelLayout(ep=2), ParallelLayout(tp=1), mode="non-collocated"), ddp=True)
    assert [r["in_place"] for r in res] == [None, None, [True]] and all(r["still_ddp"] for r in res)


def refusals_rank(cfg: RunConfig) -> list[str]:
    from refit_core.errors import ConfigError
    from refit_core.megatron import swap_model_weights

    models = mb.build_models(cfg)
    out = []
    for args in (([models.source_arg, models.source_arg], models.destination_arg, "gloo"),
                 (models.source_arg, models.destination_arg, object()),
                 (models.source_arg, models.destination_arg, "nvshmem")):
        try:
            swap_model_weights(*args)
            out.append("ran")
        except ConfigError as e:
            out.append(str(e))
    return out


def test_what_it_cannot_refit_is_refused_in_one_line() -> None:
    res = mb.run_ranks(2, refusals_rank, case(ParallelLayout(tp=2), ParallelLayout(ep=2)))
    assert res[0] == res[1] == [
        "2 model chunks: virtual pipeline stages are not refit yet; pass one chunk per rank "
        "(--num-layers-per-virtual-pipeline-stage unset)",
        "refit_method object: refitctl takes a method name ('gloo' or 'nccl'), not a Megatron-Core CopyService",
        "--refit-method nvshmem refits tensors on CUDA GPUs, these are on cpu: move the models to the GPU, or use "
        "gloo on CPU"]
