"""A rank's share of a plan as byte blocks: what each transport copies, packs, sends and unpacks.

A `Block` is `rows` rows of `row_bytes` bytes, read with one stride and written with another: a
slice of a column-parallel weight is one block of contiguous rows, a slice of a row-parallel
weight is a strided block. Transports copy lists of blocks in one launch (GPU) or one strided
copy per block (CPU); nothing here touches torch.

For staged transports (nccl, gloo) each (source, destination) pair's blocks form a stream that
is cut into chunks at row boundaries; chunk k of every pair travels in round k, so the staging
memory a rank needs per round stays within the bucket size. Both ends cut the same stream the
same way, because both derive it from the same plan entries in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple, Sequence

from refit_core.placement import Placement
from refit_core.plan import Plan, RankPlan, Transfer
from refit_core.storage import Slot, Storage


class Block(NamedTuple):
    src: int
    src_stride: int
    dst: int
    dst_stride: int
    rows: int
    row_bytes: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


def transfer_block(t: Transfer, shape: tuple[int, ...], split_dim: int, src: Slot, dst: Slot | None,
                   packed_at: int = 0) -> Block:
    """The block that moves transfer `t` from slot `src` to slot `dst` (or densely to `packed_at`)."""
    item = src.itemsize
    if split_dim == 0:
        row = item
        for s in shape[1:]:
            row *= s
        so = src.offset + t.src_offset * row
        do = dst.offset + t.dst_offset * row if dst is not None else packed_at
        return Block(so, row, do, row, t.length, row)
    if len(shape) != 2 or split_dim != 1:
        raise ValueError(f"unsupported split dimension {split_dim} for shape {shape}")
    rows = shape[0]
    src_cols, rb = src.shape[1] * item, t.length * item
    so = src.offset + t.src_offset * item
    if dst is None:
        return Block(so, src_cols, packed_at, rb, rows, rb)
    return Block(so, src_cols, dst.offset + t.dst_offset * item, dst.shape[1] * item, rows, rb)


def _unpack_block(t: Transfer, shape: tuple[int, ...], split_dim: int, dst: Slot, packed_at: int) -> Block:
    item = dst.itemsize
    if split_dim == 0:
        row = item
        for s in shape[1:]:
            row *= s
        return Block(packed_at, row, dst.offset + t.dst_offset * row, row, t.length, row)
    rb = t.length * item
    return Block(packed_at, rb, dst.offset + t.dst_offset * item, dst.shape[1] * item, shape[0], rb)


@dataclass(frozen=True)
class Chunk:
    """One round's message between a pair: `nbytes` packed bytes, and the blocks that fill it.

    Block addresses on the packed side are relative to the chunk's start."""

    peer: int
    nbytes: int
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class RankBlocks:
    """Everything one rank copies in one refit iteration."""

    local: tuple[Block, ...]
    sends: tuple[tuple[Chunk, ...], ...]  # per round: chunks packed from the source buffer
    recvs: tuple[tuple[Chunk, ...], ...]  # per round: chunks unpacked into the destination buffer

    @property
    def rounds(self) -> int:
        return len(self.sends)

    @property
    def staging_bytes(self) -> int:
        """Largest send + receive staging of any round."""
        return max((sum(c.nbytes for c in s) + sum(c.nbytes for c in r)
                    for s, r in zip(self.sends, self.recvs)), default=0)


def _cut(blocks: list[Block], chunk_bytes: int, packed_is_dst: bool) -> list[list[Block]]:
    """Cut a dense stream of blocks into chunks of at most ~chunk_bytes at row boundaries."""
    chunks: list[list[Block]] = [[]]
    used = 0
    for b in blocks:
        done = 0
        while done < b.rows:
            room = chunk_bytes - used
            take = min(b.rows - done, max(room // b.row_bytes, 0))
            if take == 0:
                if used == 0:  # one row larger than a chunk: it travels alone
                    take = 1
                else:
                    chunks.append([])
                    used = 0
                    continue
            if packed_is_dst:
                part = Block(b.src + done * b.src_stride, b.src_stride, used, b.dst_stride, take, b.row_bytes)
            else:
                part = Block(used, b.src_stride, b.dst + done * b.dst_stride, b.dst_stride, take, b.row_bytes)
            chunks[-1].append(part)
            used += take * b.row_bytes
            done += take
    return [c for c in chunks if c]


def chunk_bytes_for(plan: Plan, bucket_bytes: int, double_buffer: bool = True) -> int:
    """Per-pair message size so that one round's staging fits a bucket on every rank."""
    peers: dict[int, int] = {}
    for (s, d) in plan.pair_bytes:
        if s != d:
            peers[s] = peers.get(s, 0) + 1
            peers[d] = peers.get(d, 0) + 1
    most = max(peers.values(), default=1)
    per = bucket_bytes // (most * (2 if double_buffer else 1))
    return max(per - per % 256, 256)


class Where(NamedTuple):
    """A buffer in a one-sided refit: rank `rank`'s symmetric heap, or its private memory."""

    rank: int
    in_heap: bool


def one_sided_blocks(plan: Plan, rank_plan: RankPlan, placement: Placement,
                     storages: Sequence[tuple[Storage | None, Storage | None]]) -> list[tuple[Where, Where, Block]]:
    """(source buffer, destination buffer, block) for everything `rank_plan.rank` copies in a
    one-sided refit: its local slices, and what it writes to peers (push, all) or reads from them
    (pull). Block offsets are within the buffers named; a peer's buffer is always its heap."""
    params = plan.inventory.params
    rank = rank_plan.rank

    def at(r: int, role: str, param: int) -> tuple[Where, Slot]:
        st = storages[r][0 if role == "source" else 1]
        in_heap, slot = placement.ranks[r].slot(role, param, st.by_param[param])
        return Where(r, in_heap), slot

    def block(t: Transfer, src_rank: int, dst_rank: int) -> tuple[Where, Where, Block]:
        (sw, ss), (dw, ds) = at(src_rank, "source", t.param), at(dst_rank, "destination", t.param)
        p = params[t.param]
        return sw, dw, transfer_block(t, p.shape, p.split_dim, ss, ds)

    out = [block(t, rank, rank) for t in rank_plan.local]
    if placement.direction == "pull":
        out += [block(t, peer, rank) for peer, ts in sorted(rank_plan.recvs.items()) for t in ts]
    else:
        out += [block(t, rank, peer) for peer, ts in sorted(rank_plan.sends.items()) for t in ts]
    return out


def rank_blocks(plan: Plan, rank_plan: RankPlan, src: Storage | None, dst: Storage | None,
                chunk_bytes: int) -> RankBlocks:
    """Blocks for one rank: local copies, and staged chunks per round."""
    params = plan.inventory.params

    def shape_dim(t: Transfer) -> tuple[tuple[int, ...], int]:
        p = params[t.param]
        return p.shape, p.split_dim

    local = tuple(transfer_block(t, *shape_dim(t), src.by_param[t.param], dst.by_param[t.param])
                  for t in rank_plan.local) if rank_plan.local else ()
    send_chunks: dict[int, list[list[Block]]] = {}
    for peer, ts in rank_plan.sends.items():
        blocks = []
        for t in ts:
            blocks.append(transfer_block(t, *shape_dim(t), src.by_param[t.param], None, 0))
        send_chunks[peer] = _cut(blocks, chunk_bytes, packed_is_dst=True)
    recv_chunks: dict[int, list[list[Block]]] = {}
    for peer, ts in rank_plan.recvs.items():
        blocks = [_unpack_block(t, *shape_dim(t), dst.by_param[t.param], 0) for t in ts]
        recv_chunks[peer] = _cut(blocks, chunk_bytes, packed_is_dst=False)
    rounds = max([len(c) for c in (*send_chunks.values(), *recv_chunks.values())], default=0)
    sends = tuple(tuple(Chunk(p, sum(b.nbytes for b in cs[k]), tuple(cs[k]))
                        for p, cs in send_chunks.items() if k < len(cs)) for k in range(rounds))
    recvs = tuple(tuple(Chunk(p, sum(b.nbytes for b in cs[k]), tuple(cs[k]))
                        for p, cs in recv_chunks.items() if k < len(cs)) for k in range(rounds))
    return RankBlocks(local, sends, recvs)


def split_for_ctas(blocks: Iterable[Block], max_bytes: int = 256 << 10) -> list[Block]:
    """Split blocks into pieces of at most ~max_bytes: one GPU thread block's work each.

    Contiguous blocks (both strides equal the row length) become one long row first, so the
    kernel never divides to find rows; rows wider than max_bytes are cut across columns.
    """
    out: list[Block] = []
    for b in blocks:
        if b.src_stride == b.row_bytes and b.dst_stride == b.row_bytes:
            b = Block(b.src, b.nbytes, b.dst, b.nbytes, 1, b.nbytes)
        if b.row_bytes > max_bytes:
            step = max_bytes - max_bytes % 16
            for r in range(b.rows):
                for c in range(0, b.row_bytes, step):
                    w = min(step, b.row_bytes - c)
                    out.append(Block(b.src + r * b.src_stride + c, w, b.dst + r * b.dst_stride + c, w, 1, w))
            continue
        per = max(1, max_bytes // b.row_bytes)
        for r in range(0, b.rows, per):
            n = min(per, b.rows - r)
            out.append(replace_rows(b, r, n))
    return out


def replace_rows(b: Block, first: int, n: int) -> Block:
    return Block(b.src + first * b.src_stride, b.src_stride, b.dst + first * b.dst_stride, b.dst_stride, n, b.row_bytes)
