"""Checking a refit of unknown weights: every planned transfer's bytes, digested on both ends.

The engine verifies its synthetic payload against known values; a caller's weights are not known
in advance. What a refit must do is make every destination slice equal the source slice it comes
from, and the plan (checked once by refit_core/planning/validate.py: every destination element
exactly once, from a rank that holds it) says which slice that is. So after a refit each sender
digests the bytes of every transfer it sent (in its source buffer), each receiver the bytes it
received (in its destination buffer), the senders' digests travel in one all_gather_object, and
every receiver compares. Equal digests on every transfer is equal bytes on every destination
element (up to the digest's collision odds: CRC-32 per transfer on CPU; on GPUs two 64-bit sums,
one position-weighted, computed on the device).

Cost: reading every moved byte once more on each end (CPU: CRC-32 at a few GB/s per core, strided
blocks copied to contiguous rows first), plus one small collective (one entry per transfer). It is on by default; `Refit(verify=False)` turns it off in production.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import torch
import torch.distributed as dist

from refit_core.errors import VerificationError
from refit_core.planning.storage import Storage
from refit_core.planning.blocks import transfer_block
from refit_core.planning.plan import Plan, Transfer

_CHUNK_BYTES = 64 << 20  # bytes digested at once: bounds the temporary copy of a strided block
_MODULUS = 65521


class Digest(NamedTuple):
    first: int
    second: int


def _digest(buf: torch.Tensor, offset: int, stride: int, rows: int, row_bytes: int) -> Digest:
    """A block's bytes digested: CRC-32 over its rows in order on CPU (zlib, several GB/s);
    on a GPU two int64 sums of its int16 words (plain and position-weighted), kept on the device."""
    step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    block = buf.as_strided((rows, row_bytes), (stride, 1), buf.storage_offset() + offset)
    if buf.device.type == "cpu":
        crc = 0
        for r in range(0, rows, step):
            crc = zlib.crc32(block[r: r + step].contiguous().numpy(), crc)
        return Digest(crc, rows * row_bytes)
    cols = row_bytes // 2
    words = block.view(torch.int16)
    total = weighted = torch.zeros((), dtype=torch.int64, device=buf.device)
    col_pos = torch.arange(cols, dtype=torch.int64, device=buf.device)
    for r in range(0, rows, step):
        x = words[r: r + step].to(torch.int64)
        pos = torch.arange(r, r + x.shape[0], dtype=torch.int64, device=buf.device)[:, None] * cols + col_pos
        total = total + x.sum()
        weighted = weighted + (x * (pos % _MODULUS + 1)).sum()
    return Digest(int(total), int(weighted))


def _key(t: Transfer) -> tuple[int, int, int, int, int, int]:
    return (t.param, t.src, t.dst, t.start, t.length, t.hop)


class TransferDigests:
    """This rank's side of the check: which transfers it digests, in which buffer."""

    def __init__(self, plan: Plan, rank: int, source: Storage | None, destination: Storage | None) -> None:
        rp = plan.for_rank(rank)
        self.plan, self.rank = plan, rank
        self.sent = [t for ts in rp.sends.values() for t in ts] + list(rp.local)
        self.received = [t for ts in rp.recvs.values() for t in ts] + list(rp.local)
        # a relayed plan's hop 1: a relay forwards from its destination shard what it received at hop 0, so
        # its digest of a forwarded range is taken there, and the final receiver compares with it
        fw = plan.for_rank(rank, hop=1) if plan.relayed_bytes else None
        self.forwarded = [t for ts in fw.sends.values() for t in ts] if fw else []
        self.received += [t for ts in fw.recvs.values() for t in ts] if fw else []
        self.source, self.destination = source, destination

    def _side(self, t: Transfer, buf: torch.Tensor, storage: Storage, sending: bool) -> Digest:
        p = self.plan.params[t.param]
        slot = storage.by_param[t.param]
        b = transfer_block(t, p.shape, p.split_dim, slot, slot)
        if sending:
            return _digest(buf, b.src, b.src_stride, b.rows, b.row_bytes)
        return _digest(buf, b.dst, b.dst_stride, b.rows, b.row_bytes)

    def check(self, src_buf: torch.Tensor | None, dst_buf: torch.Tensor | None, group: object = None) -> int:
        """Compare every transfer's digests (collective over `group`); the transfers checked here.

        Raises VerificationError on every rank, naming the first wrong transfer any rank found."""
        mine = {_key(t): self._side(t, src_buf, self.source, True) for t in self.sent} if src_buf is not None else {}
        if dst_buf is not None:
            mine.update({_key(t): self._side(t, dst_buf, self.destination, True) for t in self.forwarded})
        every: list[dict] = [None] * dist.get_world_size(group)  # type: ignore[list-item]
        dist.all_gather_object(every, mine, group=group)
        sent = {k: v for d in every for k, v in d.items()}
        wrong = None
        for t in self.received if dst_buf is not None else ():
            if sent.get(_key(t)) != self._side(t, dst_buf, self.destination, False):
                wrong = (f"rank {self.rank}: {self.plan.params[t.param].name} [{t.start}, {t.start + t.length}) "
                         f"from rank {t.src} differs from the source's bytes after the refit")
                break
        errors: list[str | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(errors, wrong, group=group)
        first = next((e for e in errors if e), None)
        if first is not None:
            raise VerificationError(first)
        return len(self.received) if dst_buf is not None else 0
