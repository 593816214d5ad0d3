"""The staged transport's byte plumbing, simulated in one process over random layouts.

Packs every source rank's chunks with the same block lists, staging layout and copies the
nccl/gloo transport uses, hands each chunk to its peer, unpacks, and checks every destination
byte: small buckets force many rounds and cuts inside blocks.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refit_core.blocks import chunk_bytes_for, rank_blocks
from refit_core.layout import ParallelLayout, RefitMode, world_layout
from refit_core.model import ModelSpec, inventory
from refit_core.plan import plan_transfers
from refit_core.storage import rank_storage
from refit_core.transports.copy import copy_blocks_torch
from refit_core.transports.staged import StagedTransport
from refit_core import weights


@st.composite
def cases(draw):
    deg = st.sampled_from([1, 2, 4])
    src = ParallelLayout(tp=draw(deg), ep=draw(deg), pp=draw(st.sampled_from([1, 2])))
    dst = ParallelLayout(tp=draw(deg), ep=draw(deg))
    mla = draw(st.booleans())
    model = ModelSpec(
        num_layers=2, hidden_size=draw(st.sampled_from([40, 64])), num_attention_heads=4, ffn_hidden_size=24,
        num_experts=8, moe_ffn_hidden_size=draw(st.sampled_from([12, 16])), moe_shared_expert_intermediate_size=8,
        swiglu=draw(st.booleans()), disable_bias_linear=True, vocab_size=96, make_vocab_size_divisible_by=8,
        multi_latent_attention=mla, q_lora_rank=20 if mla else None, kv_lora_rank=12, qk_head_dim=6,
        qk_pos_emb_head_dim=2, v_head_dim=6, first_dense_layers=draw(st.sampled_from([0, 1])),
        untie_embeddings_and_output_weights=draw(st.booleans()),
    )
    mode = draw(st.sampled_from(list(RefitMode)))
    bucket = draw(st.sampled_from([2048, 8192, 1 << 20]))
    return model, src, dst, mode, bucket


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_staged_rounds_deliver_every_byte(case) -> None:
    model, src_l, dst_l, mode, bucket = case
    inv = inventory(model, (src_l.tp, dst_l.tp))
    world = world_layout(mode, src_l, dst_l)
    plan = plan_transfers(inv, world)
    chunk = chunk_bytes_for(plan, bucket)
    ranks = range(world.gpus_used)
    src_st = {r: rank_storage(inv, src_l, world.source.local(r)) for r in ranks if world.source.local(r) is not None}
    dst_st = {r: rank_storage(inv, dst_l, world.destination.local(r)) for r in ranks
              if world.destination.local(r) is not None}
    src_buf = {r: torch.empty(max(s.nbytes, 1), dtype=torch.uint8) for r, s in src_st.items()}
    dst_buf = {r: torch.full((max(s.nbytes, 1),), 0xFF, dtype=torch.uint8) for r, s in dst_st.items()}
    for r, s in src_st.items():
        weights.fill(src_buf[r], s, inv)
    rb = {r: rank_blocks(plan, plan.for_rank(r), src_st.get(r), dst_st.get(r), chunk) for r in ranks}
    for r in ranks:
        if rb[r].local:
            copy_blocks_torch(rb[r].local, src_buf[r], dst_buf[r])
    rounds = max(b.rounds for b in rb.values())
    for k in range(rounds):
        sent: dict[tuple[int, int], torch.Tensor] = {}
        for r in ranks:
            if k < rb[r].rounds and rb[r].sends[k]:
                stage = torch.empty(StagedTransport._laid_out_size(rb[r].sends[k]), dtype=torch.uint8)
                blocks, where = StagedTransport._lay_out(rb[r].sends[k], packed_is_dst=True)
                copy_blocks_torch(blocks, src_buf[r], stage)
                for peer, off, n in where:
                    sent[(r, peer)] = stage[off: off + n].clone()
        for r in ranks:
            if k < rb[r].rounds and rb[r].recvs[k]:
                stage = torch.empty(StagedTransport._laid_out_size(rb[r].recvs[k]), dtype=torch.uint8)
                blocks, where = StagedTransport._lay_out(rb[r].recvs[k], packed_is_dst=False)
                for peer, off, n in where:
                    stage[off: off + n] = sent.pop((peer, r))
                copy_blocks_torch(blocks, stage, dst_buf[r])
        assert not sent, "a chunk was sent that nobody received"
    for r, s in dst_st.items():
        weights.verify(dst_buf[r], s, inv, r)
    assert max(b.staging_bytes for b in rb.values()) <= max(bucket, 2 * 256 * len(list(ranks))) + 4096
