"""The destination's precision: BF16 as trained, or FP8 as DeepSeek-V3 and Kimi K2 ship it.

FP8 is the format of the published DeepSeek-V3 / Kimi K2 checkpoints: float8 e4m3 weights in
128 x 128 blocks, one float32 scale per block (`weight_scale_inv`, shape [ceil(rows/128),
ceil(cols/128)]: x = fp8 x scale), for the linear weights of attention, shared and routed experts
and dense MLPs (`is_quantised`). Embeddings, norms, the router and its expert bias, and the output
layer stay BF16 (docs/model.md says why). The sender quantises: the network carries FP8 bytes.

Scales are tensors of their own in the plan (appended after the weights in the destination
inventory, so a weight keeps its index). A scale block is a function of all 128 x 128 values of
its block in the GLOBAL tensor, so where a TP shard boundary of the source cuts a block (seed
ffn 2688 / TP 2 = 1344 rows = 10.5 blocks), no single source holds the block: the plan lists such
blocks as `BlockGather`s (the holders of each part exchange their partial absolute maxima before
quantising, one float32 per 128 columns; docs/model.md gives the cost). A block held whole by
one source group is formed by that one owner. Pure: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from refit_core.errors import ConfigError
from refit_core.planning.layout import ParallelLayout
from refit_core.planning import methods
from refit_core.planning.model import Inventory, ParamSpec
from refit_core.planning.sharding import Piece

PRECISIONS = ("bf16", "fp8")
FP8_BLOCK = 128
FP8_DTYPE = "float8_e4m3fn"
SCALE_DTYPE = "float32"
SCALE_SUFFIX = "_scale_inv"
_QUANTISED = ("linear_fc1.weight", "linear_fc2.weight", "linear_qkv.weight", "linear_proj.weight",
              "linear_q_proj.weight", "linear_q_down_proj.weight", "linear_q_up_proj.weight",
              "linear_kv_down_proj.weight", "linear_kv_up_proj.weight")


def check_precision(value: object) -> str:
    if value not in PRECISIONS:
        raise ConfigError(f"--rl-inference-precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def execution_refusal(precision: str, method: str) -> str | None:
    """Why a run (not a plan) with `method` cannot use `precision`, or None. FP8 runs on the methods
    that move the sender's quantised shards as plain bytes (the registry's `fp8`); the naive baseline
    gathers whole BF16 tensors and Megatron-Core's refit copies its own parameters, so neither can."""
    if precision == "fp8" and not methods.method(method).fp8:
        able = ", ".join(m.name for m in methods.METHODS.values() if m.fp8)
        return (f"--refit-method {method} moves BF16 destinations only: run --rl-inference-precision fp8 "
                f"with --refit-method {able}, or use --rl-inference-precision bf16")
    return None


def is_quantised(p: ParamSpec) -> bool:
    """A linear weight of attention, an expert (routed or shared) or a dense MLP: FP8 at the destination."""
    return len(p.shape) == 2 and p.name.endswith(_QUANTISED)


def scale_spec(p: ParamSpec) -> ParamSpec:
    """The `weight_scale_inv` tensor of quantised weight `p`: one float32 per 128 x 128 block."""
    rows, cols = p.shape
    return replace(p, name=p.name + SCALE_SUFFIX, dtype=SCALE_DTYPE,
                   shape=(-(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK)))


@dataclass(frozen=True)
class DestinationInventory:
    """What the destination holds: the weights (FP8 where quantised) and then the scale tensors.

    `inventory.params[i]` for i < len(source inventory) is source parameter i in its destination
    dtype; `scales[j]` = (weight index, scale index in `inventory.params`)."""

    inventory: Inventory
    scales: tuple[tuple[int, int], ...]
    precision: str


def destination_inventory(inv: Inventory, precision: str) -> DestinationInventory:
    if precision == "bf16":
        return DestinationInventory(inv, (), precision)
    params = [replace(p, dtype=FP8_DTYPE) if is_quantised(p) else p for p in inv.params]
    scales = []
    for i, p in enumerate(inv.params):
        if is_quantised(p):
            scales.append((i, len(params)))
            params.append(scale_spec(p))
    return DestinationInventory(Inventory(inv.spec, tuple(params), inv.vocab), tuple(scales), precision)


def block_pieces(pieces: tuple[Piece, ...]) -> tuple[Piece, ...]:
    """The scale rows (block indices along the split dimension) a holder of `pieces` needs, laid out
    one piece after the other: a piece [start, stop) needs blocks [start // 128, ceil(stop / 128)).
    A block can appear twice (a SwiGLU gate ending inside a block the up half starts in)."""
    out: list[Piece] = []
    local = 0
    for pc in pieces:
        b0, b1 = pc.start // FP8_BLOCK, -(-pc.stop // FP8_BLOCK)
        if out and out[-1].stop == b0:  # contiguous globally and locally: one piece
            out[-1] = Piece(out[-1].start, out[-1].length + b1 - b0, out[-1].local_start)
        else:
            out.append(Piece(b0, b1 - b0, local))
        local += b1 - b0
    return tuple(out)


def whole_blocks(piece: Piece, length: int) -> tuple[int, int]:
    """Blocks [b0, b1) lying wholly inside `piece` of a dimension of `length` (the last block of the
    dimension is whole when it ends at the dimension's end, even if shorter than 128)."""
    b0 = -(-piece.start // FP8_BLOCK)
    b1 = -(-piece.stop // FP8_BLOCK) if piece.stop == length else piece.stop // FP8_BLOCK
    return b0, max(b0, b1)


@dataclass(frozen=True)
class BlockGather:
    """Scale blocks [start, start+length) of `param`'s split dimension that no source holds whole.

    `parts` are the holder sets of the source shards that each hold some rows of the blocks: they
    all-reduce their partial absolute maxima (one float32 per block) before quantising, and
    `owners` (the holders of the first part) send the scales."""

    param: int
    start: int
    length: int
    parts: tuple[tuple[int, ...], ...]

    @property
    def owners(self) -> tuple[int, ...]:
        return self.parts[0]


def scale_runs(p: ParamSpec, source_groups: list[tuple[tuple[Piece, ...], tuple[int, ...]]], param: int,
               want: Piece) -> tuple[list[tuple[int, int, tuple[int, ...]]], list[BlockGather]]:
    """Who forms the scale blocks `want` (block indices) of weight `p`: runs (start, length, owner
    holders) in order, and the gathers among them (blocks cut by a source shard boundary)."""
    n = p.shape[p.split_dim]
    runs: list[tuple[int, int, tuple[int, ...]]] = []
    gathers: list[BlockGather] = []
    lo, hi = want.start, want.stop
    spans = sorted((pc.start, pc.stop, holders) for pieces, holders in source_groups for pc in pieces)
    b = lo
    while b < hi:
        r0, r1 = b * FP8_BLOCK, min((b + 1) * FP8_BLOCK, n)
        whole = None
        for s0, s1, holders in spans:
            if s0 <= r0 and r1 <= s1:
                w0, w1 = whole_blocks(Piece(s0, s1 - s0, 0), n)
                whole = (b, min(w1, hi) - b, holders)
                break
        if whole is not None:
            runs.append(whole)
            b += whole[1]
            continue
        parts = tuple(h for s0, s1, h in spans if s0 < r1 and r0 < s1)
        if gathers and gathers[-1].parts == parts and gathers[-1].start + gathers[-1].length == b:
            gathers[-1] = replace(gathers[-1], length=gathers[-1].length + 1)
        else:
            gathers.append(BlockGather(param, b, 1, parts))
        runs.append((b, 1, parts[0]))
        b += 1
    return runs, gathers


def destination_slot_sizes(inv: Inventory, layout: ParallelLayout, precision: str) -> list[list[int]] | None:
    """Aligned bytes of each destination rank's shards in `precision` (FP8 weights, then their
    scales: the rows of blocks its weight rows touch); None for bf16 (the source's sizes)."""
    if precision == "bf16":
        return None
    from refit_core.planning.storage import ALIGN
    from refit_core.planning.memory import slot_sizes
    from refit_core.planning.sharding import shard_groups

    d = destination_inventory(inv, precision)
    n = len(inv.params)
    held = slot_sizes(Inventory(inv.spec, d.inventory.params[:n], inv.vocab), layout)
    spec = inv.spec
    for wi, si in d.scales:
        unit = d.inventory.params[si].nbytes // d.inventory.params[si].shape[d.inventory.params[si].split_dim]
        for g in shard_groups(inv.params[wi], layout, spec.num_layers, spec.num_experts):
            b = -(-sum(pc.length for pc in block_pieces(g.pieces)) * unit // ALIGN) * ALIGN
            for h in g.holders:
                held[h].append(b)
    return held
