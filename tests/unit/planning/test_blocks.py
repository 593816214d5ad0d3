"""The staged transport's byte plumbing, simulated in one process over random layouts.

Packs every source rank's chunks with the same block lists, staging layout and copies the
nccl/gloo transport uses, hands each chunk to its peer, unpacks, and checks every destination
byte: small buckets force many rounds and cuts inside blocks.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refit_core.planning.blocks import Direct, chunk_bytes_for, rank_blocks
from refit_core.planning.layout import ParallelLayout, RefitMode, world_layout
from refit_core.planning.model import ModelSpec, inventory
from refit_core.planning.plan import plan_transfers
from refit_core.planning.storage import rank_storage
from refit_core.execution.transports.copy import copy_blocks_torch
from refit_core.execution.transports.staged import StagedTransport
from refit_core.execution import weights


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


def _count(blocks, counts: torch.Tensor) -> None:
    """Add 1 to every destination byte the blocks write."""
    for b in blocks:
        counts.as_strided((b.rows, b.row_bytes), (b.dst_stride, 1), b.dst).add_(1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.sampled_from([None, 0, 64, 4096, 1 << 20]))
def test_staged_rounds_deliver_every_byte(case, direct_min) -> None:
    """Local copies, zero-copy runs and staged rounds together write every destination byte exactly
    once, with the right value; each pair's zero-copy messages match one for one (same sizes, same
    order on both ends); staging stays within the bucket."""
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
    counts = {r: torch.zeros(max(s.nbytes, 1), dtype=torch.int32) for r, s in dst_st.items()}
    for r, s in src_st.items():
        weights.fill(src_buf[r], s, inv)
    rb = {r: rank_blocks(plan, plan.for_rank(r), src_st.get(r), dst_st.get(r), chunk, direct_min) for r in ranks}
    for r in ranks:
        if rb[r].local:
            copy_blocks_torch(rb[r].local, src_buf[r], dst_buf[r])
            _count(rb[r].local, counts[r])
    # zero-copy: a receiver's messages from a peer are the sender's to it, in the same order
    for s in ranks:
        for d in ranks:
            sent = [m for m in rb[s].direct_sends if m.peer == d]
            got = [m for m in rb[d].direct_recvs if m.peer == s]
            assert [(m.src, m.dst, m.nbytes) for m in sent] == [(m.src, m.dst, m.nbytes) for m in got]
            for m in sent:
                assert direct_min is not None and m.nbytes >= direct_min
                dst_buf[d][m.dst: m.dst + m.nbytes] = src_buf[s][m.src: m.src + m.nbytes]
                counts[d][m.dst: m.dst + m.nbytes] += 1
    if direct_min is None:
        assert all(not b.direct_sends and not b.direct_recvs for b in rb.values())
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
                    msg = sent.pop((peer, r))
                    assert msg.numel() == n, "a staged chunk's size differs between its two ends"
                    stage[off: off + n] = msg
                copy_blocks_torch(blocks, stage, dst_buf[r])
                _count([c._replace(src=0) for c in blocks], counts[r])
        assert not sent, "a chunk was sent that nobody received"
    for r, s in dst_st.items():
        weights.verify(dst_buf[r], s, inv, r)
        owned = torch.zeros_like(counts[r], dtype=torch.bool)
        for slot in s.slots:
            owned[slot.offset: slot.offset + slot.nbytes] = True
        assert torch.all(counts[r][owned] == 1), f"rank {r}: a destination byte written twice or never"
        assert torch.all(counts[r][~owned] <= 1), f"rank {r}: padding written twice"
    staging = [sum(c.nbytes for c in s) + sum(c.nbytes for c in r) for b in rb.values() for s, r in zip(b.sends, b.recvs)]
    assert max(staging, default=0) <= max(bucket, 2 * 256 * len(list(ranks))) + 4096
    staged = sum(b.staged_bytes for b in rb.values()) // 2
    direct = sum(b.direct_bytes for b in rb.values()) // 2
    padding = sum(int(c.sum()) for c in counts.values()) - plan.delivered_bytes  # bridged gaps
    assert staged + direct == plan.network_bytes + padding


def test_contiguous_runs_coalesce_into_one_zero_copy_message() -> None:
    """TP1 -> TP1 between two ranks: the same layout on both ends, so the whole shard is one
    contiguous run: one message, nothing staged; with zero-copy off, nothing is direct."""
    model = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, num_experts=4,
                      moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32, disable_bias_linear=True,
                      vocab_size=128, make_vocab_size_divisible_by=8)
    one = ParallelLayout(tp=1, ep=1)
    plan = plan_transfers(inventory(model, (1, 1)), world_layout(RefitMode.NON_COLLOCATED, one, one))
    src = rank_storage(plan.inventory, one, 0)
    dst = rank_storage(plan.inventory, one, 0)
    send = rank_blocks(plan, plan.for_rank(0), src, None, 1 << 20, direct_min_bytes=0)
    recv = rank_blocks(plan, plan.for_rank(1), None, dst, 1 << 20, direct_min_bytes=0)
    end = src.slots[-1].offset + src.slots[-1].nbytes  # the whole buffer but its trailing padding
    assert send.direct_sends == (Direct(1, 0, 0, end),) and recv.direct_recvs == (Direct(0, 0, 0, end),)
    assert send.rounds == recv.rounds == 0 and send.staged_bytes == 0
    off = rank_blocks(plan, plan.for_rank(0), src, None, 1 << 20, direct_min_bytes=None)
    assert off.direct_sends == () and off.staged_bytes == plan.network_bytes
    big = rank_blocks(plan, plan.for_rank(0), src, None, 1 << 20, direct_min_bytes=src.nbytes + 1)
    assert big.direct_sends == () and big.staged_bytes == plan.network_bytes


def test_strided_blocks_are_staged_and_whole_rows_go_direct() -> None:
    """TP2 -> TP1: column-parallel halves are contiguous on both ends (direct); a row-parallel
    half is strided in the full destination (staged)."""
    model = ModelSpec(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, num_experts=4,
                      moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32, disable_bias_linear=True,
                      vocab_size=128, make_vocab_size_divisible_by=8)
    src_l, dst_l = ParallelLayout(tp=2, ep=1), ParallelLayout(tp=1, ep=1)
    plan = plan_transfers(inventory(model, (2, 1)), world_layout(RefitMode.NON_COLLOCATED, src_l, dst_l))
    dst = rank_storage(plan.inventory, dst_l, 0)
    recv = rank_blocks(plan, plan.for_rank(2), None, dst, 1 << 20, direct_min_bytes=0)
    strided = [p for p in plan.inventory.params if p.split_dim == 1]
    assert strided and recv.staged_bytes == sum(p.nbytes for p in strided)
    assert plan.per_rank[2].bytes_in <= recv.direct_bytes + recv.staged_bytes < plan.per_rank[2].bytes_in + 256 * 40


def test_a_long_run_travels_as_messages_of_at_most_one_gib(monkeypatch: pytest.MonkeyPatch) -> None:
    import refit_core.planning.blocks as blocks

    monkeypatch.setattr(blocks, "DIRECT_MAX_BYTES", 4096)
    model = ModelSpec(num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, num_experts=4,
                      moe_ffn_hidden_size=32, moe_shared_expert_intermediate_size=32, disable_bias_linear=True,
                      vocab_size=128, make_vocab_size_divisible_by=8)
    one = ParallelLayout(tp=1, ep=1)
    plan = plan_transfers(inventory(model, (1, 1)), world_layout(RefitMode.NON_COLLOCATED, one, one))
    src = rank_storage(plan.inventory, one, 0)
    send = rank_blocks(plan, plan.for_rank(0), src, None, 1 << 20, direct_min_bytes=0).direct_sends
    end = src.slots[-1].offset + src.slots[-1].nbytes
    assert [m.src for m in send] == list(range(0, end, 4096)) and all(m.src == m.dst for m in send)
    assert all(m.nbytes == 4096 for m in send[:-1]) and sum(m.nbytes for m in send) == end
