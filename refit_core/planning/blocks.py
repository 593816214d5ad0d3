"""A rank's share of a plan as byte blocks: what each transport copies, packs, sends and unpacks.

A `Block` is `rows` rows of `row_bytes` bytes, read with one stride and written with another: a
slice of a column-parallel weight is one block of contiguous rows, a slice of a row-parallel
weight is a strided block. Transports copy lists of blocks in one launch (GPU) or one strided
copy per block (CPU); nothing here touches torch.

For two-sided transports (nccl, gloo) each (source, destination) pair's transfers form a stream,
the same on both ends (plan order). Each transfer is one block from the sender's source buffer to
the receiver's destination buffer. Blocks contiguous on both ends whose bytes follow each other on
both ends coalesce into runs; a run of at least `direct_min_bytes` travels zero-copy, straight from
the source buffer into the destination buffer (`Direct`). Everything else (short runs, strided
blocks) is packed: its stream is cut into chunks at row boundaries, and chunk k of every pair
travels in round k, so the staging memory a rank needs per round stays within the bucket size.
Both ends derive runs and cuts from the same plan entries and the same two shard layouts, so their
messages match one for one, in the same order, per pair.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

from refit_core.planning.placement import Placement
from refit_core.planning.plan import Plan, RankPlan, Transfer
from refit_core.planning.storage import ALIGN, Slot, Storage
from refit_core.planning.wire import shard_storage


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


def transfer_block(t: Transfer, shape: tuple[int, ...], split_dim: int, src: Slot, dst: Slot) -> Block:
    """The block that moves transfer `t` from slot `src` to slot `dst` (byte offsets in their buffers)."""
    item = src.itemsize
    if split_dim == 0:
        row = item
        for s in shape[1:]:
            row *= s
        return Block(src.offset + t.src_offset * row, row, dst.offset + t.dst_offset * row, row, t.length, row)
    if len(shape) != 2 or split_dim != 1:
        raise ValueError(f"unsupported split dimension {split_dim} for shape {shape}")
    rb = t.length * item
    return Block(src.offset + t.src_offset * item, src.shape[1] * item, dst.offset + t.dst_offset * item,
                 dst.shape[1] * item, shape[0], rb)


@dataclass(frozen=True)
class Chunk:
    """One round's message between a pair: `nbytes` packed bytes, and the blocks that fill it.

    Block addresses on the packed side are relative to the chunk's start."""

    peer: int
    nbytes: int
    blocks: tuple[Block, ...]


class Direct(NamedTuple):
    """One zero-copy message of a pair: `nbytes` contiguous bytes from the sender's source buffer at
    `src` straight into the receiver's destination buffer at `dst`."""

    peer: int  # the other end: the receiver for a send, the sender for a receive
    src: int
    dst: int
    nbytes: int

    def offset(self, sending: bool) -> int:
        """Where this end's bytes are: in the source buffer when sending, else the destination."""
        return self.src if sending else self.dst


@dataclass(frozen=True)
class RankBlocks:
    """Everything one rank copies in one refit iteration."""

    local: tuple[Block, ...]
    sends: tuple[tuple[Chunk, ...], ...]  # per round: chunks packed from the source buffer
    recvs: tuple[tuple[Chunk, ...], ...]  # per round: chunks unpacked into the destination buffer
    direct_sends: tuple[Direct, ...] = ()  # zero-copy, per peer in stream order (peers ascending)
    direct_recvs: tuple[Direct, ...] = ()

    @property
    def rounds(self) -> int:
        return len(self.sends)

    @property
    def staged_bytes(self) -> int:
        """Bytes this rank packs (sends) plus bytes it unpacks (receives)."""
        return sum(c.nbytes for rnd in (*self.sends, *self.recvs) for c in rnd)

    @property
    def direct_bytes(self) -> int:
        return sum(d.nbytes for d in (*self.direct_sends, *self.direct_recvs))


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
    params = plan.params
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


class ShardLayouts:
    """Any rank's source or destination shard layout, derived from the plan (pure, cached).

    A two-sided transport needs its peers' layouts to know which blocks are contiguous on the
    other end too; every rank derives them the same way, so both ends agree without talking."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._cache: dict[tuple[str, int], Storage | None] = {}

    def __call__(self, role: str, rank: int) -> Storage | None:
        key = (role, rank)
        if key not in self._cache:
            self._cache[key] = shard_storage(self.plan, role, rank)
        return self._cache[key]


DIRECT_MAX_BYTES = 1 << 30
"""Longest zero-copy message: a longer run travels as several, in order (element counts stay far
below 2^31 in every backend; the per-message cost is nothing at this size)."""


def _contiguous(b: Block) -> bool:
    return b.rows == 1 or (b.src_stride == b.row_bytes and b.dst_stride == b.row_bytes)


def _padding(storage: Storage, offsets: list[int], start: int, stop: int) -> bool:
    """Whether bytes [start, stop) of a shard buffer belong to no slot (alignment padding).
    `offsets`: the slots' offsets, ascending (slots are laid out in order)."""
    i = bisect.bisect_right(offsets, start) - 1
    if i >= 0 and offsets[i] + storage.slots[i].nbytes > start:
        return False
    return i + 1 >= len(offsets) or offsets[i + 1] >= stop


def _joins(end: Block, b: Block, dst: Storage, offsets: list[int]) -> bool:
    """Whether contiguous `b` continues the run ending with contiguous `end` on both ends: right
    after it, or after the same short gap on both ends that is only padding in the destination
    (the padding bytes then travel too: harmless, no slot owns them)."""
    gap = b.src - (end.src + end.nbytes)
    if gap != b.dst - (end.dst + end.nbytes) or not 0 <= gap < ALIGN:
        return False
    return gap == 0 or _padding(dst, offsets, end.dst + end.nbytes, b.dst)


def pair_stream(plan: Plan, transfers: Sequence[Transfer], src: Storage, dst: Storage,
                direct_min_bytes: int | None) -> tuple[list[Block], list[Block]]:
    """A pair's transfers as (direct runs, staged blocks), both in stream order, with full
    addresses on both ends (sender's source buffer -> receiver's destination buffer).

    Contiguous blocks that follow each other on both ends (across padding, see `_joins`)
    coalesce first; a coalesced run of at least `direct_min_bytes` is direct (one row). `None`
    sends everything staged (the old path)."""
    params = plan.params
    blocks = [transfer_block(t, params[t.param].shape, params[t.param].split_dim,
                             src.by_param[t.param], dst.by_param[t.param]) for t in transfers]
    if direct_min_bytes is None:
        return [], blocks
    offsets = [slot.offset for slot in dst.slots]
    runs: list[list[Block]] = []
    for b in blocks:
        last = runs[-1] if runs else None
        if last is not None and _contiguous(b) and _contiguous(last[-1]) and _joins(last[-1], b, dst, offsets):
            last.append(b)
            continue
        runs.append([b])
    direct: list[Block] = []
    staged: list[Block] = []
    for run in runs:
        n = run[-1].src + run[-1].nbytes - run[0].src
        if _contiguous(run[0]) and n >= direct_min_bytes:
            for at in range(0, n, DIRECT_MAX_BYTES):
                m = min(DIRECT_MAX_BYTES, n - at)
                direct.append(Block(run[0].src + at, m, run[0].dst + at, m, 1, m))
        else:
            staged.extend(run)
    return direct, staged


def _packed(b: Block) -> Block:
    """The sender's half of a staged block: rows read from the source, written densely from 0."""
    return Block(b.src, b.src_stride, 0, b.row_bytes, b.rows, b.row_bytes)


def _unpacked(b: Block) -> Block:
    """The receiver's half: dense rows from 0, written into the destination."""
    return Block(0, b.row_bytes, b.dst, b.dst_stride, b.rows, b.row_bytes)


def local_blocks(plan: Plan, rank_plan: RankPlan, src: Storage | None, dst: Storage | None) -> list[Block]:
    """This rank's local copies (source shard -> destination shard on the same rank) as blocks."""
    if not rank_plan.local:
        return []
    assert src is not None and dst is not None
    params = plan.params
    return [transfer_block(t, params[t.param].shape, params[t.param].split_dim, src.by_param[t.param],
                           dst.by_param[t.param]) for t in rank_plan.local]


def rank_blocks(plan: Plan, rank_plan: RankPlan, src: Storage | None, dst: Storage | None,
                chunk_bytes: int, direct_min_bytes: int | None = None,
                layouts: Callable[[str, int], Storage | None] | None = None) -> RankBlocks:
    """Blocks for one rank: local copies, zero-copy runs, and staged chunks per round.

    With `direct_min_bytes` None every network byte is staged (the all-staged path, kept for
    before/after measurements). `layouts` (role, rank) gives the peers' shard layouts (default:
    derived from the plan)."""
    peers = layouts or ShardLayouts(plan)

    def other(role: str, rank: int) -> Storage:
        st = peers(role, rank)
        if st is None:
            raise ValueError(f"rank {rank} has no {role} shards but the plan moves some")
        return st

    local = tuple(local_blocks(plan, rank_plan, src, dst))
    direct_sends: list[Direct] = []
    send_chunks: dict[int, list[list[Block]]] = {}
    for peer, ts in rank_plan.sends.items():
        assert src is not None
        peer_dst = other("destination", peer)
        direct, staged = pair_stream(plan, ts, src, peer_dst, direct_min_bytes)
        direct_sends += [Direct(peer, b.src, b.dst, b.nbytes) for b in direct]
        send_chunks[peer] = _cut([_packed(b) for b in staged], chunk_bytes, packed_is_dst=True)
    direct_recvs: list[Direct] = []
    recv_chunks: dict[int, list[list[Block]]] = {}
    for peer, ts in rank_plan.recvs.items():
        assert dst is not None
        peer_src = other("source", peer)
        direct, staged = pair_stream(plan, ts, peer_src, dst, direct_min_bytes)
        direct_recvs += [Direct(peer, b.src, b.dst, b.nbytes) for b in direct]
        recv_chunks[peer] = _cut([_unpacked(b) for b in staged], chunk_bytes, packed_is_dst=False)
    rounds = max([len(c) for c in (*send_chunks.values(), *recv_chunks.values())], default=0)
    sends = tuple(tuple(Chunk(p, sum(b.nbytes for b in cs[k]), tuple(cs[k]))
                        for p, cs in send_chunks.items() if k < len(cs)) for k in range(rounds))
    recvs = tuple(tuple(Chunk(p, sum(b.nbytes for b in cs[k]), tuple(cs[k]))
                        for p, cs in recv_chunks.items() if k < len(cs)) for k in range(rounds))
    return RankBlocks(local, sends, recvs, tuple(direct_sends), tuple(direct_recvs))


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
