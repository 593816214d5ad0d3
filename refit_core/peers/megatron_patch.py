"""The one patch refitctl applies to Megatron-Core 0.16.1's resharding, in one visible place.

Megatron-Core 0.16.1 describes each parameter to its centralised planner with
`resharding.utils.extract_param_metadata`. For routed experts of the local spec (SequentialMLP,
`...mlp.experts.local_experts.<k>...`) that description is wrong in two ways, found by the
oracle tests (tests/e2e/local/test_megatron_oracle.py):

1. Expert parameters are recognised by `allreduce=False`, which Megatron sets only when EP > 1.
   With EP = 1 the expert linears (ETP = 1, yet marked `tensor_model_parallel=True`) are paired
   with the dense TP group: any source with EP = 1 and TP > 1 fails to plan ("Cannot build TP
   descriptor ... src_world*src_local=2*N != 1*N").
2. Local expert indices are renamed to global ones only for Transformer-Engine names
   (`weight<k>`), not for `local_experts.<k>`: destination experts are matched with the source's
   expert of the same *local* index. EP 1 -> 2 writes other experts' weights; EP 2 -> 1 fails
   ("Destination parameter '...local_experts.2...' not found in source model").

`patch_expert_metadata()` wraps the planner's `extract_param_metadata`: every per-expert
parameter (either spelling) is marked expert-parallel, takes its TP ranks from the expert TP
group (`expt_tp`) and its EP ranks from `ep`, and gets the global expert index
(ep_rank * experts / EP + k) in its resolved name. Nothing else changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_LOCAL_EXPERT = re.compile(r"(\.experts\.local_experts\.)(\d+)(\.)")
_TE_EXPERT = re.compile(r"(\.experts\.linear_fc[12]\.(?:weight|bias))(\d+)\Z")
_original: Any = None


@dataclass(frozen=True)
class PatchReport:
    """What a run of Megatron-Core had applied: reported beside its results."""

    patched: bool
    what: str


def expert_index(name: str) -> tuple[re.Pattern[str], int] | None:
    """(pattern, local expert index) of a per-expert parameter name, None for any other."""
    for pat in (_LOCAL_EXPERT, _TE_EXPERT):
        m = pat.search(name)
        if m:
            return pat, int(m.group(2))
    return None


def patch_expert_metadata() -> PatchReport:
    """Correct Megatron-Core 0.16.1's planner metadata for routed experts (idempotent)."""
    global _original
    import torch.distributed as dist
    from megatron.core.resharding import planner

    if _original is None:
        _original = planner.extract_param_metadata
    orig = _original

    def extract(param: Any, param_name: str, owner_rank: int, pg_collection: Any, num_experts: int | None = None,
                layer_module_prefix_map: Any = None) -> Any:
        meta = orig(param, param_name, owner_rank, pg_collection, num_experts=num_experts,
                    layer_module_prefix_map=layer_module_prefix_map)
        found = expert_index(meta.resolved_name) if num_experts else None
        if found is None:
            return meta
        pat, local = found
        ep_ranks = dist.get_process_group_ranks(pg_collection.ep)
        meta.is_ep = True
        meta.expert_parallel_group_ranks = ep_ranks
        if meta.is_tp:
            meta.tensor_parallel_group_ranks = dist.get_process_group_ranks(pg_collection.expt_tp)
        if pat is _LOCAL_EXPERT or meta.global_expert_index is None:
            glob = ep_ranks.index(owner_rank) * (num_experts // len(ep_ranks)) + local
            meta.resolved_name = pat.sub(lambda m: f"{m.group(1)}{glob}{m.group(3) if pat is _LOCAL_EXPERT else ''}",
                                         meta.resolved_name, count=1)
            meta.global_expert_index = glob
        return meta

    planner.extract_param_metadata = extract
    return PatchReport(True, "megatron_patch.patch_expert_metadata: routed experts planned over expt_tp/ep "
                             "with global expert indices")


def unpatch_expert_metadata() -> PatchReport:
    """Megatron-Core as shipped again (for runs that record what it does unpatched)."""
    global _original
    from megatron.core.resharding import planner

    if _original is not None:
        planner.extract_param_metadata = _original
        _original = None
    return PatchReport(False, "megatron-core as shipped")
