"""Megatron-Core's own refit as a transport: the peer refitctl is measured against.

`--refit-method megatron-gloo` (CPU) and `megatron-nccl` (GPUs) move the weights with
`megatron.core.resharding.swap_model_weights` between real Megatron-Core `GPTModel`s built on
refitctl's world layout (refit_core/peers/megatron_build.py). The models' parameters are VIEWS
into the same flat shard buffers refitctl's own transports use (`param.data` = typed view of the
rank's slot), so the engine fills, poisons and verifies them exactly as it does for `gloo` and
`nccl`, and what Megatron writes is what is verified, bit for bit.

What differs from Megatron as shipped, each in one visible place:
- the expert-metadata patch (refit_core/peers/megatron_patch.py) is applied in `prepare()` and reported
  as `patched: true` in `info` (results.json's `transport`); `--megatron-unpatched` runs
  Megatron-Core as shipped (`patched: false`), to record what it does then;
- a bare GPTModel keeps torch LayerNorm weights and learned position embeddings in fp32 under bf16
  parameters (Megatron-LM's Float16Module casts them to bf16 when it wraps the model): here those
  parameters become bf16 views like every other one, so both peers move the same bytes
  (`info["cast_to_bf16"]` counts them);
- on CPU the gloo copy service is built without its CUDA stream (megatron_build.cpu_gloo_service).

Megatron's planner and copy services use the WORLD process group (all_gather_object, barrier):
every rank of the job takes part, idle ranks with parameter-less stub models (jobs/refit_job.py
makes every rank active for these methods). The first iteration builds Megatron's plan (cached
on the destination model for the next ones) and is timed whole: the first refit a user waits for.
Building the models is setup, like allocating buffers, and is not timed (`info["build_ms"]`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from refit_core.errors import ConfigError, TransportError
from refit_core.planning.layout import Placement
from refit_core.planning.model import Inventory
from refit_core.planning.storage import Storage
from refit_core.execution.transports.base import IterationStats, RankContext, allocate, whole, TransportReport
from refit_core.execution.weights import param_view

METHODS = ("megatron-gloo", "megatron-nccl", "megatron-nvshmem")
CUDA_METHODS = ("megatron-nccl", "megatron-nvshmem")
NVSHMEM_REFUSAL = ("--refit-method megatron-nvshmem cannot run: megatron-core 0.16.1's NVSHMEM copy service imports "
                   "cuda.core.experimental and needs kernels/chunked_kernel.cu, which its wheel (and sdist) do not "
                   "ship: use megatron-nccl")


def refusal(method: str) -> str | None:
    """Why `method` cannot run at all (one line), or None: checked before anything is launched."""
    from refit_core.planning.methods import method as lookup

    return lookup(method).refusal


class MegatronTransport(TransportReport):
    """Megatron-Core's swap_model_weights over refitctl's shard buffers (backend gloo or nccl)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        if refusal(method):
            raise ConfigError(refusal(method))
        self.name = method
        self.backend = method.removeprefix("megatron-")
        self.models: Any = None
        self.service: Any = None
        self.planned = False

    def prepare(self, ctx: RankContext) -> None:
        from refit_core.peers import megatron_patch
        from refit_core.peers import megatron_build as mb

        if mb.megatron_core() is None:
            raise ConfigError(f"--refit-method {self.name} needs megatron-core: pip install 'refitctl[megatron]'")
        self.ctx = ctx
        t0 = time.perf_counter()
        # THE one place Megatron-Core is changed: its planner's metadata for routed experts
        report = (megatron_patch.unpatch_expert_metadata() if ctx.config.run.megatron_unpatched
                  else megatron_patch.patch_expert_metadata())
        self.models = mb.build_models(ctx.config)
        src_buf = allocate(ctx.source.nbytes, ctx.device) if ctx.source else None
        dst_buf = allocate(ctx.destination.nbytes, ctx.device) if ctx.destination else None
        world = ctx.plan.world
        cast = 0
        if self.models.source is not None:
            cast += bind(self.models.source, world.source, ctx.rank, ctx.source, src_buf, ctx.plan.inventory)
        if self.models.destination is not None:
            cast += bind(self.models.destination, world.destination, ctx.rank, ctx.destination, dst_buf,
                         ctx.plan.inventory)
        self.source_parts = whole(src_buf, ctx.source)
        self.destination_parts = whole(dst_buf, ctx.destination)
        if self.backend == "gloo":
            self.service = mb.cpu_gloo_service() if not torch.cuda.is_available() else _gloo_service()
        else:
            from megatron.core.resharding.copy_services.nccl_copy_service import NCCLCopyService

            self.service = NCCLCopyService()
        from refit_core.peers.megatron_build import MEGATRON_CORE_VERSION

        self.info = {"peer": "megatron-core", "megatron_core": _version(MEGATRON_CORE_VERSION),
                     "backend": self.backend, "patched": report.patched, "patch": report.what,
                     "cast_to_bf16": cast, "build_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    def iteration(self) -> IterationStats:
        from refit_core.peers import megatron_build as mb

        cuda = self.ctx.device.type == "cuda"
        phases: dict[str, float] = {}
        _sync(cuda)
        t0 = time.perf_counter()
        if not self.planned:  # the first refit: Megatron's centralised plan, cached on the destination
            err = mb.plan_or_error(self.models, self.ctx.config.model.num_experts)
            if err is not None:
                raise TransportError(f"Megatron-Core could not plan this refit ({'patched' if self.info['patched'] else 'as shipped'}): {err}")
            self.planned = True
            phases["plan"] = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        mb.swap(self.models, self.service)
        _sync(cuda)
        t2 = time.perf_counter()
        phases["swap"] = (t2 - t1) * 1e3
        if "plan" in phases:  # after the clock: what Megatron's plan moves, for the benchmark's reasons
            self.info["plan_traffic"] = plan_traffic(self.models)
        return IterationStats((t2 - t0) * 1e3, phases, 1)

    def close(self) -> None:
        self.models = self.service = None
        self.source_parts, self.destination_parts = [], []


def bind(model: Any, place: Placement, rank: int, storage: Storage, buf: torch.Tensor, inv: Inventory) -> int:
    """Make every parameter of `model` a view of its slot in `buf` (rank `rank` of `place`).

    Names map through refit_core/peers/megatron_names.py; every slot must be bound exactly once and
    every shape must be the slot's. Returns how many parameters Megatron held in another dtype
    (fp32 torch norms, position embeddings) and now hold as refitctl's bf16."""
    from refit_core.peers.megatron_names import megatron_to_refitctl

    spec = inv.spec
    local = place.local(rank)
    coords = place.layout.coords(local)
    layer_offset = place.layout.stage_starts(spec.num_layers)[coords.pp]
    per_rank = (spec.num_experts or 1) // place.layout.ep
    bound: set[int] = set()
    cast = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            rname = megatron_to_refitctl(name, layer_offset=layer_offset, expert_offset=coords.ep * per_rank,
                                         is_moe_layer=spec.is_moe_layer)
            i = inv.index.get(rname)
            slot = storage.by_param.get(i) if i is not None else None
            if slot is None:
                raise TransportError(f"rank {rank}: Megatron parameter {name} ({rname}) has no slot in refitctl's "
                                     "shards for this rank: the name table or the sharding disagree")
            view = param_view(buf, slot, inv.params[i].dtype)
            if tuple(view.shape) != tuple(p.shape):
                raise TransportError(f"rank {rank}: {rname}: Megatron's local shape {tuple(p.shape)}, refitctl's "
                                     f"{tuple(view.shape)}")
            cast += p.dtype != view.dtype
            p.data = view
            bound.add(i)
    missing = [inv.params[s.param].name for s in storage.slots if s.param not in bound]
    if missing:
        raise TransportError(f"rank {rank}: refitctl shards with no Megatron parameter: {', '.join(missing[:3])}")
    return cast


def plan_traffic(models: Any) -> dict[str, int]:
    """Megatron's cached plan over all ranks (collective, untimed): bytes over the network and copied
    locally, the busiest rank's network bytes in and out, and the messages. The engine writes
    `info` into the rank record after every iteration, so this lands in results.json's `transport`."""
    import torch.distributed as dist

    plan = getattr(models.destination_arg, "_cached_reshard_plan", None)
    rank = dist.get_rank()
    src = dict(models.source_arg.named_parameters()) if models.source is not None else {}
    dst = dict(models.destination_arg.named_parameters()) if models.destination is not None else {}
    net_in = net_out = local = msgs = 0
    for op in (plan.recv_ops if plan else ()):
        n = dst[op.param_name].data[op.my_slice].nbytes
        if op.peer_rank == rank:
            local += n
        else:
            net_in, msgs = net_in + n, msgs + 1
    for op in (plan.send_ops if plan else ()):
        if op.peer_rank != rank:
            net_out += src[op.param_name].data[op.my_slice].nbytes
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, (net_in, net_out, local, msgs))
    return {"network_bytes": sum(e[0] for e in every), "local_bytes": sum(e[2] for e in every),
            "busiest_in_bytes": max(e[0] for e in every), "busiest_out_bytes": max(e[1] for e in every),
            "messages": sum(e[3] for e in every), "busiest_messages_in": max(e[3] for e in every)}


def _gloo_service() -> Any:
    """Megatron's GlooCopyService as shipped (it needs CUDA for its stream)."""
    from megatron.core.resharding.copy_services.gloo_copy_service import GlooCopyService

    return GlooCopyService()


def _version(default: str) -> str:
    try:
        from importlib.metadata import version

        return version("megatron-core")
    except Exception:  # noqa: BLE001 - an installed but unregistered copy
        return default


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()
