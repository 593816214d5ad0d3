"""The library API (refit_core/library): a refit built once, called on the caller's own tensors.

What a user relies on: after each call every destination tensor holds exactly the source's bytes
(checked here against refitctl's deterministic values, independently of the API's own digest
check); the tensors are used where they live (a shared parameter buffer in place, its data
pointers unchanged; separate tensors adopted once into one buffer, never copied again); the
digest check fails on a wrong byte; bad input is refused in one line. CPU, gloo, forked ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from helpers import ddp_like

from refit_core.errors import ConfigError, VerificationError
from refit_core.execution import weights
from refit_core.planning.storage import rank_storage
from refit_core.library import Refit, refit_config
from refit_core.library.local import run_local, synthetic_shards
from refit_core.planning.layout import ParallelLayout
from refit_core.planning.model import ModelSpec

TINY = ModelSpec(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=64,
                 num_experts=4, moe_shared_expert_intermediate_size=32, seq_length=16, vocab_size=500,
                 disable_bias_linear=True, swiglu=True, untie_embeddings_and_output_weights=True)


def rank_tensors(cfg, role: str, values: bool, shared: bool) -> dict[str, torch.Tensor] | None:
    """This rank's tensors of `role`: separate tensors, or views of one buffer in REVERSED order with
    gaps (as a DDP parameter buffer lays them out: not refitctl's order); refitctl's values or NaN."""
    shards = synthetic_shards(cfg, role, values)
    if shards is None:
        return None
    return ddp_like(shards) if shared else {k: v.clone() for k, v in shards.items()}


def expect_destination(cfg, tensors) -> None:
    """Every destination tensor equals refitctl's expected shard, bitwise."""
    place = cfg.world().destination
    inv = cfg.inventory()
    st = rank_storage(inv, place.layout, place.local(dist.get_rank()))
    buf = torch.empty(st.nbytes, dtype=torch.uint8)
    weights.fill(buf, st, inv)
    for s in st.slots:
        name = inv.params[s.param].name
        want = weights.param_view(buf, s, inv.params[s.param].dtype)
        assert torch.equal(tensors[name].view(torch.int16), want.view(torch.int16)), name


def refit_rank(cfg, shared: bool) -> dict:
    src = rank_tensors(cfg, "source", True, shared)
    dst = rank_tensors(cfg, "destination", False, shared)
    ptrs = {k: t.data_ptr() for k, t in (dst or {}).items()}
    refit = Refit.build(cfg, src, dst)
    after_build = {k: t.data_ptr() for k, t in (dst or {}).items()}
    out = {"in_place": [b.in_place for b in (refit.source, refit.destination) if b is not None], "checked": 0}
    for _ in range(2):
        if dst:
            for t in dst.values():
                t.fill_(float("nan"))
        stats = refit()
        out["checked"] += stats.transfers_checked
        if dst:
            expect_destination(cfg, dst)
    out["same_pointers"] = after_build == {k: t.data_ptr() for k, t in (dst or {}).items()}
    out["unchanged_from_caller"] = ptrs == after_build if dst else None
    refit.close()
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["adopted", "in-place"])
def test_tp_ep_change_non_collocated(shared: bool) -> None:
    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(ep=2), world_size=4, collocated=False)
    res = run_local(4, refit_rank, cfg, shared)
    assert all(r["in_place"] == [shared] for r in res)
    assert all(r["same_pointers"] for r in res)  # every call writes the same tensors
    # in place: the caller's own bytes; adopted: each tensor moved once into the refit's buffer
    assert [r["unchanged_from_caller"] for r in res] == [None, None, shared, shared]
    assert sum(r["checked"] for r in res) > 0


def test_collocated_tp_ep_swap_in_place() -> None:
    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(ep=2), world_size=2)
    res = run_local(2, refit_rank, cfg, True)
    assert all(r["in_place"] == [True, True] and r["unchanged_from_caller"] for r in res)


def corrupt_rank(cfg) -> str:
    """A destination byte changed after the transport ran: the digest check names it on every rank."""
    src = rank_tensors(cfg, "source", True, False)
    dst = rank_tensors(cfg, "destination", False, False)
    refit = Refit.build(cfg, src, dst)
    inner = refit.transport.iteration

    def corrupted():
        stats = inner()
        if dst:
            next(iter(dst.values())).view(-1)[0] += 1
        return stats

    refit.transport.iteration = corrupted
    try:
        refit()
    except VerificationError as e:
        return str(e)
    return "passed"


def test_verification_names_a_wrong_byte() -> None:
    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(tp=1), world_size=3, collocated=False)
    res = run_local(3, corrupt_rank, cfg)
    assert res[0] == res[1] == res[2]
    assert res[0].startswith("rank 2: embedding.word_embeddings.weight [0, ") and \
        res[0].endswith("differs from the source's bytes after the refit")


def wrong_input_rank(cfg) -> list[str]:
    src = rank_tensors(cfg, "source", True, False)
    dst = rank_tensors(cfg, "destination", False, False)
    errors = []
    for bad_src in ({**src, "extra.weight": torch.zeros(1)}, {k: v for k, v in list(src.items())[1:]},
                    {k: (v[:1] if i == 0 else v) for i, (k, v) in enumerate(src.items())}):
        with pytest.raises(ConfigError) as e:
            Refit.build(cfg, bad_src, dst)
        errors.append(str(e.value))
    return errors


def test_wrong_tensors_are_refused_in_one_line() -> None:
    cfg = refit_config(TINY, ParallelLayout(tp=1), ParallelLayout(tp=1), world_size=1)
    (errors,) = run_local(1, wrong_input_rank, cfg)
    assert errors[0].startswith("source tensor 'extra.weight' is not a parameter this rank holds")
    assert errors[1] == ("source tensors lack 'embedding.word_embeddings.weight' (1 missing): pass every parameter "
                         "this rank holds in the source layout")
    assert errors[2] == ("source tensor 'embedding.word_embeddings.weight' has shape (1, 64), this rank's shard of it "
                         "is (512, 64): the layout given is not the one the tensors were built for")
    assert all("\n" not in e for e in errors)


def test_world_size_must_match() -> None:
    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(tp=2), world_size=4, collocated=False)
    run_local(2, _too_few_ranks, cfg)


def _too_few_ranks(cfg) -> None:
    with pytest.raises(ConfigError, match="^the process group has 2 ranks but the layouts use 4 of a world of 4: "):
        Refit.build(cfg, None, None)


def corrupt_forwarded_rank(cfg) -> tuple[int, str]:
    """A relayed plan: a byte a relay forwarded (hop 1) changed after the refit on the final receiver."""
    from refit_core.planning.blocks import transfer_block

    src = rank_tensors(cfg, "source", True, False)
    dst = rank_tensors(cfg, "destination", False, False)
    refit = Refit.build(cfg, src, dst)
    assert refit.plan.relayed_bytes
    clean = refit().transfers_checked  # every hop verified as it is
    me = dist.get_rank()
    hop1 = [t for t in refit.plan.transfers if t.hop == 1 and t.dst == me]
    inner = refit.transport.iteration

    def corrupted():
        stats = inner()
        if hop1:
            t, p = hop1[0], refit.plan.params[hop1[0].param]
            slot = refit.destination.storage.by_param[t.param]
            refit.destination.buffer[transfer_block(t, p.shape, p.split_dim, slot, slot).dst] ^= 1
        return stats

    refit.transport.iteration = corrupted
    try:
        refit()
    except VerificationError as e:
        return clean, str(e)
    return clean, "passed"


def test_a_relayed_plan_is_checked_on_both_hops() -> None:
    """TP2 -> TP2 on two nodes of 2 (sources 0-1, destinations 2-3): each destination gets the slices both need
    once per node and forwards half of them (hop 1). The check covers what the relays forwarded."""
    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(tp=2), world_size=4, collocated=False)
    cfg = cfg.with_changes(gpus_per_node=2)
    res = run_local(4, corrupt_forwarded_rank, cfg)
    assert res[2][0] > 0 and res[3][0] > 0
    errors = {e for _, e in res}
    assert len(errors) == 1 and errors != {"passed"}, errors
    (error,) = errors
    assert error.startswith("rank 2: ") or error.startswith("rank 3: ")
    assert error.endswith("from rank 3 differs from the source's bytes after the refit") or \
        error.endswith("from rank 2 differs from the source's bytes after the refit")  # a relay, not a source


def path_rank(cfg) -> tuple[bool, bool]:
    src = rank_tensors(cfg, "source", True, True)
    dst = rank_tensors(cfg, "destination", False, True)
    refit = Refit.build(cfg, src, dst)
    refit()
    if dst:
        expect_destination(cfg, dst)
    info = refit.transport.info
    refit.close()
    return info["shared_memory"], info.get("cross_memory", False)


def test_without_posix_semaphores_gloo_falls_back_to_its_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host where the host barrier cannot be made (no POSIX semaphores): neither memory path, every byte
    over gloo's sockets, still verified; and with them, the read path where a rank receives >= 4 MiB."""
    from refit_core.execution.transports.hostbarrier import HostBarrier
    from refit_core.errors import TransportError

    cfg = refit_config(TINY, ParallelLayout(tp=2), ParallelLayout(ep=2), world_size=4, collocated=False)
    for mode, want in (("read", (True, True)), ("staged", (True, False))):
        assert set(run_local(4, path_rank, cfg.with_changes(gloo_shared_memory=mode))) == {want}

    def refuse(*args, **kwargs):
        raise TransportError("cannot open the host barrier's semaphores (Function not implemented)")

    monkeypatch.setattr(HostBarrier, "create", classmethod(refuse))
    for mode in ("read", "staged"):
        assert set(run_local(4, path_rank, cfg.with_changes(gloo_shared_memory=mode))) == {(False, False)}
