"""Real Megatron-Core models on refitctl's rank layout, and a process harness to run them (gloo, CPU).

This is the one place that builds Megatron-Core objects: a `TransformerConfig` from refitctl's
`ModelSpec` and `ParallelLayout`, one `ProcessGroupCollection` per model from its rank grids
(dense [tp, cp, dp, pp] and expert [etp, ep, edp, pp], tp fastest, over the ranks refitctl's
`WorldLayout` gives the model), the `GPTModel`s, and what `swap_model_weights` needs on CPU (a
gloo copy service without a CUDA stream, a parameter-less stub on ranks without a role). It also
reads each parameter's global placement from Megatron's own `sharded_state_dict()`, fills source
parameters with refitctl's deterministic values and compares destination parameters with them.

`run_ranks` forks one process per rank after megatron is imported once in the parent, so a
world of 8 ranks costs one import, not eight (the tests run on 2 CPU cores). Megatron-Core is an
optional extra (`refitctl[megatron]`): nothing here is imported by the rest of refitctl.
"""

from __future__ import annotations

import itertools
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from refit_core.config import RunConfig
from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout, Placement
from refit_core.peers.megatron_names import megatron_to_refitctl, to_refitctl
from refit_core.planning.model import Inventory, ModelSpec
from refit_core.planning.sharding import local_shape, rank_pieces
from refit_core.planning.storage import rank_storage
from refit_core.execution.weights import fill, param_view
from refit_core.library.local import run_local

MEGATRON_CORE_VERSION = "0.16.1"


def megatron_core() -> types.ModuleType | None:
    """The imported `megatron.core`, or None when the extra is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Transformer Engine and Apex are not installed" on CPU
            import megatron.core
            import megatron.core.models.gpt.gpt_model  # noqa: F401
            import megatron.core.resharding  # noqa: F401
    except ImportError:
        return None
    return megatron.core


# ---------------------------------------------------------------------------------------------
# process groups: one collection per model, from its rank grids
# ---------------------------------------------------------------------------------------------
def rank_groups(shape: tuple[int, ...], names: tuple[str, ...], dims: tuple[str, ...],
                first_rank: int) -> list[list[int]]:
    """Rank lists of the sub-grids spanned by `dims` (first name varies fastest), as HyperCommGrid
    enumerates them (re-done here: HyperCommGrid needs einops)."""
    strides = [1]
    for s in shape[:-1]:
        strides.append(strides[-1] * s)
    inner = [i for i, n in enumerate(names) if n in dims]
    outer = [i for i, n in enumerate(names) if n not in dims]
    groups = []
    for oc in itertools.product(*[range(shape[i]) for i in outer]):
        base = first_rank + sum(c * strides[i] for c, i in zip(oc, outer))
        groups.append(sorted(base + sum(c * strides[i] for c, i in zip(ic, inner))
                             for ic in itertools.product(*[range(shape[i]) for i in inner])))
    return groups


def _new_groups(groups: list[list[int]]) -> Any:
    """dist.new_group for every rank list (collective over the world); the one holding this rank."""
    import torch.distributed as dist

    mine, rank = None, dist.get_rank()
    for ranks in groups:
        g = dist.new_group(ranks=ranks, backend="gloo")
        if rank in ranks:
            mine = g
    return mine


def process_groups(place: Placement) -> Any:
    """The ProcessGroupCollection of the model laid on `place` (None on ranks outside it).

    Collective: every rank of the world calls it with the same placement. Same recipe as
    Megatron-LM's build_inference_pg_collection: dense grid [tp, cp=1, dp, pp] and expert grid
    [etp=1, ep, edp, pp], so local rank i has tp = i % TP, ep = i % EP, stage = i // (TP*EP),
    refitctl's layout (refit_core/planning/layout.py).
    """
    import torch.distributed as dist
    from megatron.core.process_groups_config import ProcessGroupCollection

    lay = place.layout
    dshape, dnames = (lay.tp, 1, lay.ep, lay.pp), ("tp", "cp", "dp", "pp")
    eshape, enames = (1, lay.ep, lay.tp, lay.pp), ("tp", "ep", "dp", "pp")

    def dense(*dims: str) -> Any:
        return _new_groups(rank_groups(dshape, dnames, dims, place.first_rank))

    def expert(*dims: str) -> Any:
        return _new_groups(rank_groups(eshape, enames, dims, place.first_rank))

    g = dict(tp=dense("tp"), cp=dense("cp"), pp=dense("pp"), dp=dense("dp"), mp=dense("tp", "pp"),
             tp_cp=dense("tp", "cp"), dp_cp=dense("cp", "dp"), tp_dp_cp=dense("tp", "cp", "dp"),
             ep=expert("ep"), expt_tp=expert("tp"), expt_dp=expert("dp"), tp_ep=expert("tp", "ep"),
             tp_ep_pp=expert("tp", "ep", "pp"))
    pp_groups = rank_groups(dshape, dnames, ("pp",), place.first_rank)
    g["embd"] = _new_groups([[r[0]] if len(r) == 1 else [r[0], r[-1]] for r in pp_groups])
    g["pos_embd"] = _new_groups([[r[0]] for r in pp_groups])
    if place.local(dist.get_rank()) is None:
        return None
    return ProcessGroupCollection(**g)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def transformer_config(spec: ModelSpec, lay: ParallelLayout) -> Any:
    """Megatron's TransformerConfig for `spec` on `lay`, as the seed's flags would make it.

    bf16 parameters built on CPU; `perform_initialization=True` because init is what marks
    weights `tensor_model_parallel` / `partition_dim` / `partition_stride` (zeros: cheap, the
    values are overwritten); the allgather token dispatcher because alltoall makes a CUDA stream
    at build time; no sequence parallel (the local spec refuses it).
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    if lay.pp > 1 and not spec.untie_embeddings_and_output_weights:
        raise ConfigError("tied embeddings with PP > 1: Megatron-Core moves the last stage's embedding copy to CUDA "
                          "at build time, so it cannot be built on CPU: add --untie-embeddings-and-output-weights")
    if spec.multi_latent_attention or spec.first_dense_layers:
        raise ConfigError("the Megatron-Core peer builds GQA models with MoE in every layer: "
                          "drop --multi-latent-attention / --first-dense-layers")
    kw: dict[str, Any] = {}
    if spec.swiglu:
        kw.update(gated_linear_unit=True, activation_func=torch.nn.functional.silu)
    if spec.is_moe:
        kw.update(num_moe_experts=spec.num_experts, moe_router_topk=spec.moe_router_topk,
                  moe_ffn_hidden_size=spec.moe_ffn, moe_grouped_gemm=False,
                  moe_shared_expert_intermediate_size=spec.moe_shared_expert_intermediate_size,
                  moe_token_dispatcher_type="allgather")
    return TransformerConfig(
        num_layers=spec.num_layers, hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads, num_query_groups=spec.num_query_groups,
        kv_channels=spec.kv_channels, ffn_hidden_size=spec.ffn,
        add_bias_linear=not spec.disable_bias_linear, normalization=spec.normalization,
        tensor_model_parallel_size=lay.tp, expert_model_parallel_size=lay.ep,
        expert_tensor_parallel_size=1, pipeline_model_parallel_size=lay.pp,
        num_layers_in_first_pipeline_stage=lay.first_stage_layers,
        num_layers_in_last_pipeline_stage=lay.last_stage_layers,
        sequence_parallel=False, use_cpu_initialization=True, perform_initialization=True,
        init_method=torch.nn.init.zeros_, output_layer_init_method=torch.nn.init.zeros_,
        params_dtype=torch.bfloat16, bf16=True, pipeline_dtype=torch.bfloat16,
        hidden_dropout=0.0, attention_dropout=0.0, **kw)


def gpt_model(spec: ModelSpec, inv: Inventory, lay: ParallelLayout, pgc: Any, stage: int) -> Any:
    """A GPTModel (local spec: SequentialMLP experts, torch norms) for one pipeline stage.

    The vocabulary passed is refitctl's padded one (Megatron-LM pads before it builds the model;
    GPTModel takes the padded size as given)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    cfg = transformer_config(spec, lay)
    layer_spec = get_gpt_layer_local_spec(num_experts=spec.num_experts, moe_grouped_gemm=False,
                                          normalization=spec.normalization)
    model = GPTModel(config=cfg, transformer_layer_spec=layer_spec, vocab_size=inv.vocab,
                     max_sequence_length=spec.max_positions, pre_process=stage == 0,
                     post_process=stage == lay.pp - 1, parallel_output=True,
                     share_embeddings_and_output_weights=not spec.untie_embeddings_and_output_weights,
                     position_embedding_type=spec.position_embedding_type, pg_collection=pgc)
    return model.eval()


class RoleStub(torch.nn.Module):
    """'No model of this role on this rank' for swap_model_weights (0.16.1 refuses None): no
    parameters, only the config and a process-group namespace it reads."""

    def __init__(self, cfg: Any, pgc: Any) -> None:
        super().__init__()
        self.config = cfg
        self.pg_collection = pgc


@dataclass
class RankModels:
    """This rank's Megatron models (None where it holds no role) and what swap_model_weights takes."""

    rank: int
    source: Any
    destination: Any
    source_arg: Any
    destination_arg: Any


def build_models(cfg: RunConfig) -> RankModels:
    """Both models of `cfg` on this rank (collective: process groups are built over the world)."""
    import torch.distributed as dist

    world = cfg.world()
    inv = cfg.inventory()
    rank = dist.get_rank()
    pgcs = [process_groups(world.source), process_groups(world.destination)]
    models, args = [], []
    for place, pgc in zip((world.source, world.destination), pgcs):
        local = place.local(rank)
        m = None
        if pgc is not None and local is not None:
            m = gpt_model(cfg.model, inv, place.layout, pgc, place.layout.coords(local).pp)
        models.append(m)
        stub_pgc = types.SimpleNamespace(dp=dist.group.WORLD, tp=None, ep=None, pp=None)
        args.append(m if m is not None else RoleStub(transformer_config(cfg.model, place.layout), stub_pgc))
    return RankModels(rank, models[0], models[1], args[0], args[1])


def contiguous_like_ddp(model: Any) -> torch.Tensor:
    """Lay `model`'s parameters in one buffer as a trained model has them: cast to bf16 as
    Megatron-LM's Float16Module does, then views of one contiguous buffer as Megatron-Core's
    DistributedDataParallel keeps them (its `param_data`: parameters in reverse order, each start
    padded to a multiple of 64 elements). Returns the buffer (DDP itself needs CUDA to build)."""
    params = list(model.parameters())[::-1]
    sizes = [-(-p.numel() // 64) * 64 for p in params]
    buf = torch.zeros(sum(sizes), dtype=torch.bfloat16, device=params[0].device)
    at = 0
    with torch.no_grad():
        for p, n in zip(params, sizes):
            view = buf[at: at + p.numel()].view(p.shape)
            view.copy_(p)
            p.data = view
            at += n
    return buf


# ---------------------------------------------------------------------------------------------
# global placement, from Megatron's own sharded_state_dict()
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MegatronShard:
    """One parameter shard as Megatron's checkpointing places it in the global (stacked) tensor."""

    key: str
    global_shape: tuple[int, ...]
    global_offset: tuple[int, ...]
    local_shape: tuple[int, ...]
    prepend_axes: int
    param: str  # the parameter's name in named_parameters()
    local_offset: int  # elements from the parameter's first element to the shard's


def sharded_params(model: Any) -> list[MegatronShard]:
    """Every parameter shard of `model` with its checkpoint key and global placement.

    SwiGLU fc1 comes as a factory that builds two shards (gate and up halves) of one parameter;
    both are listed under the parameter's name."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    by_storage = {p.untyped_storage().data_ptr(): n for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    out: list[MegatronShard] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)
        elif isinstance(obj, ShardedTensorFactory):
            visit(obj.build())
        elif isinstance(obj, ShardedTensor):
            t = obj.data
            if not torch.is_tensor(t):
                return
            name = by_storage.get(t.untyped_storage().data_ptr())
            base = params.get(name)
            if name is None:
                return  # buffers, extra state
            if obj.flattened_range is not None:
                raise ConfigError(f"{obj.key}: flattened shards are not compared: build without a distributed optimizer")
            out.append(MegatronShard(obj.key, tuple(obj.global_shape), tuple(obj.global_offset),
                                     (1,) * obj.prepend_axis_num + tuple(t.shape), obj.prepend_axis_num, name,
                                     t.storage_offset() - base.storage_offset()))

    visit(model.sharded_state_dict(metadata={"dp_cp_group": model.pg_collection.dp_cp}))
    return out


def _runs(triples: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(global start, length, local start) runs along the split dimension, in local order, with
    runs adjacent both globally and locally merged (so one piece and two touching pieces compare equal)."""
    out: list[tuple[int, int, int]] = []
    for g, n, loc in sorted(triples, key=lambda t: t[2]):
        if out and out[-1][0] + out[-1][1] == g and out[-1][2] + out[-1][1] == loc:
            out[-1] = (out[-1][0], out[-1][1] + n, out[-1][2])
        else:
            out.append((g, n, loc))
    return out


def placement_mismatches(cfg: RunConfig, place: Placement, model: Any) -> list[str]:
    """Differences between Megatron's placement of this rank's parameters and refitctl's.

    For every shard `sharded_state_dict()` lists: the checkpoint key (with the layer / expert it
    sits at on the stacked axes) and the parameter name must both map, through
    refit_core/peers/megatron_names.py, to the same refitctl parameter; its global shape must be
    refitctl's; and the global slice the rank holds, with where it sits in the local tensor, must be
    refitctl's `rank_pieces` for this rank. Every refitctl parameter of this rank must be one of
    Megatron's and the other way round. Empty when they agree."""
    import torch.distributed as dist

    inv = cfg.inventory()
    spec = cfg.model
    local = place.local(dist.get_rank())
    lay = place.layout
    coords = lay.coords(local)
    layer_offset = lay.stage_starts(spec.num_layers)[coords.pp]
    per_rank = (spec.num_experts or 1) // lay.ep
    params = dict(model.named_parameters())
    bad: list[str] = []
    runs: dict[str, list[tuple[int, int, int]]] = {}
    for sh in sharded_params(model):
        name = to_refitctl(sh.key, "checkpoint", axis_offsets=sh.global_offset, is_moe_layer=spec.is_moe_layer)
        by_param = megatron_to_refitctl(sh.param, layer_offset=layer_offset, expert_offset=coords.ep * per_rank,
                                        is_moe_layer=spec.is_moe_layer)
        if name != by_param:
            bad.append(f"{sh.key}@{sh.global_offset}: key maps to {name}, parameter {sh.param} to {by_param}")
            continue
        p = inv.params[inv.index[name]] if name in inv.index else None
        if p is None:
            bad.append(f"{name}: Megatron has it, refitctl's inventory does not")
            continue
        gshape, goff, lshape = (sh.global_shape[sh.prepend_axes:], sh.global_offset[sh.prepend_axes:],
                                sh.local_shape[sh.prepend_axes:])
        if gshape != p.shape:
            bad.append(f"{name}: global shape {gshape} in Megatron, {p.shape} in refitctl")
            continue
        d = p.split_dim
        for i, (o, n, full) in enumerate(zip(goff, lshape, gshape)):
            if i != d and (o, n) != (0, full):
                bad.append(f"{name}: Megatron splits dimension {i} ({o}+{n} of {full}); refitctl splits only {d}")
        stride = 1
        for s in params[sh.param].shape[d + 1:]:
            stride *= s
        runs.setdefault(name, []).append((goff[d], lshape[d], sh.local_offset // stride))
        if tuple(params[sh.param].shape) != local_shape(p, lay):
            bad.append(f"{name}: local shape {tuple(params[sh.param].shape)} in Megatron, {local_shape(p, lay)} "
                       "in refitctl")
    bad += _held_differently(inv, lay, local, runs)
    return [f"rank {dist.get_rank()}: {b}" for b in bad]


def _held_differently(inv: Inventory, lay: ParallelLayout, local: int,
                      runs: dict[str, list[tuple[int, int, int]]]) -> list[str]:
    """Parameters only one side places on this rank, and those both place but slice differently."""
    spec = inv.spec
    bad = []
    mine = {p.name for p in inv.params if rank_pieces(p, lay, local, spec.num_layers, spec.num_experts)}
    for name in sorted(mine - set(runs)):
        bad.append(f"{name}: refitctl places it on this rank, Megatron does not")
    for name in sorted(set(runs) - mine):
        bad.append(f"{name}: Megatron places it on this rank, refitctl does not")
    for name in sorted(set(runs) & mine):
        p = inv.params[inv.index[name]]
        want = _runs([(pc.start, pc.length, pc.local_start)
                      for pc in rank_pieces(p, lay, local, spec.num_layers, spec.num_experts)])
        got = _runs(runs[name])
        if got != want:
            bad.append(f"{name}: Megatron holds (global start, length, local start) {got}, refitctl {want}")
    return bad


# ---------------------------------------------------------------------------------------------
# refitctl's values in Megatron's parameters
# ---------------------------------------------------------------------------------------------
def refitctl_views(cfg: RunConfig, place: Placement, model: Any) -> dict[str, tuple[str, torch.Tensor]]:
    """For every Megatron parameter of this rank: (refitctl name, refitctl's expected shard).

    The shard is refitctl's own: rank_storage() slices the parameter for this rank and
    weights.fill() writes the values refitctl's sources hold and its destinations verify."""
    import torch.distributed as dist

    inv = cfg.inventory()
    local = place.local(dist.get_rank())
    storage = rank_storage(inv, place.layout, local)
    buf = torch.empty(storage.nbytes, dtype=torch.uint8)
    fill(buf, storage, inv)
    coords = place.layout.coords(local)
    layer_offset = place.layout.stage_starts(cfg.model.num_layers)[coords.pp]
    per_rank = (cfg.model.num_experts or 1) // place.layout.ep
    out = {}
    for name, _ in model.named_parameters():
        rname = megatron_to_refitctl(name, layer_offset=layer_offset, expert_offset=coords.ep * per_rank,
                                     is_moe_layer=cfg.model.is_moe_layer)
        i = inv.index.get(rname)
        if i is None or i not in storage.by_param:
            raise ConfigError(f"rank {dist.get_rank()}: Megatron parameter {name} (refitctl {rname}) "
                              "is not in refitctl's shards for this rank")
        out[name] = (rname, param_view(buf, storage.by_param[i], inv.params[i].dtype))
    return out


def fill_source(cfg: RunConfig, models: RankModels) -> None:
    """Write refitctl's deterministic values into this rank's source parameters."""
    if models.source is None:
        return
    views = refitctl_views(cfg, cfg.world().source, models.source)
    with torch.no_grad():
        for name, p in models.source.named_parameters():
            p.copy_(views[name][1].to(p.dtype).view(p.shape))


def poison_destination(models: RankModels) -> None:
    """NaN in every destination parameter: an element the refit does not write cannot pass."""
    if models.destination is not None:
        with torch.no_grad():
            for p in models.destination.parameters():
                p.fill_(float("nan"))


def destination_mismatches(cfg: RunConfig, models: RankModels) -> dict[str, int]:
    """{refitctl name: elements differing} for this rank's destination parameters, bitwise.

    Megatron keeps torch LayerNorm weights in fp32 under bf16 parameters; refitctl moves them as
    bf16. Its values are integers in [-128, 127], exact in both, so the fp32 parameter is compared
    with refitctl's bf16 value widened (exact), bit for bit."""
    if models.destination is None:
        return {}
    views = refitctl_views(cfg, cfg.world().destination, models.destination)
    bad = {}
    for name, p in models.destination.named_parameters():
        rname, want = views[name]
        want = want.to(p.dtype).view(p.shape)
        ibits = {2: torch.int16, 4: torch.int32}[p.element_size()]
        n = int((p.data.view(ibits) != want.view(ibits)).sum())
        if n:
            bad[rname] = n
    return bad


# ---------------------------------------------------------------------------------------------
# Megatron-Core's refit on CPU
# ---------------------------------------------------------------------------------------------
def cpu_gloo_service() -> Any:
    """Megatron's GlooCopyService minus its torch.cuda.Stream() (its run() skips a None stream)."""
    import torch.distributed as dist
    from megatron.core.resharding.copy_services.gloo_copy_service import GlooCopyService

    class CpuGlooCopyService(GlooCopyService):
        def __init__(self) -> None:  # the parent's constructor without the CUDA stream
            self.rank = dist.get_rank()
            self.world_size = dist.get_world_size()
            self.gloo_pg = dist.new_group(backend="gloo")
            self.send_ops, self.recv_ops = [], []
            self._copy_stream = None

    return CpuGlooCopyService()


def plan_or_error(models: RankModels, num_experts: int | None) -> str | None:
    """Build Megatron's centralised plan and cache it on the destination, or return its error.

    Rank 0 plans alone and raises before its broadcast when it cannot plan, leaving the other
    ranks waiting in broadcast_object_list: rank 0 then broadcasts an empty plan list so they
    return (and fail reading it); every rank then agrees on rank 0's message."""
    import torch.distributed as dist
    from megatron.core.resharding import planner

    world = dist.get_world_size()
    err = None
    try:
        plan = planner.build_centralized_reshard_plan(models.source_arg, models.destination_arg,
                                                      num_experts=num_experts)
        models.destination_arg._cached_reshard_plan = plan
    except RuntimeError as e:
        err = str(e)
        if dist.get_rank() == 0:
            dist.broadcast_object_list([None] * world, src=0)
    except AttributeError:  # non-zero ranks: the empty plan rank 0 sent on failure
        err = "?"
    errs = [None] * world
    dist.all_gather_object(errs, err)
    return errs[0]


def swap(models: RankModels, service: Any) -> None:
    """One Megatron-Core refit of this rank (the plan cached on the destination after the first)."""
    from megatron.core.resharding import swap_model_weights

    swap_model_weights(models.source_arg, models.destination_arg, service)


# ---------------------------------------------------------------------------------------------
# the process harness
# ---------------------------------------------------------------------------------------------
def run_ranks(world: int, fn: Callable[..., Any], *args: Any, timeout_s: float = 300,
              backend: str = "gloo") -> list[Any]:
    """Run `fn(*args)` on `world` forked processes under one gloo process group; their results
    by rank. Megatron is imported here first so the children inherit it (one import, not one per
    rank). Raises RuntimeError with the first failing rank's traceback."""
    if megatron_core() is None:
        raise ConfigError("megatron-core is not installed: pip install 'refitctl[megatron]'")
    return run_local(world, fn, *args, timeout_s=timeout_s, backend=backend)
