"""gloo ranks of one host reading their senders' source shards directly: cross-memory attach.

Between processes of one host Linux copies straight from one process's memory into another's
(process_vm_readv: "cross-memory attach", what MPI libraries use for large messages on a node). Each
receiver reads every block it is due from its sender's source buffer into its destination buffer: one memory
copy per byte, no staging, nothing packed, no socket. A barrier opens the call (every sender's source is
what the caller has written) and one closes it (no sender writes its source again while a receiver reads it),
both the host's own (hostbarrier.py), not gloo's.
It needs the kernel to let a rank read its peers (same user; ptrace rules): tried once at set-up, and where it
cannot, the ranks stage through shared memory instead (shared.py). `--gloo-shared-memory off` turns both off.
"""

from __future__ import annotations

import ctypes
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from refit_core.errors import TransportError
from refit_core.execution.transports.hostbarrier import HostBarrier
from refit_core.execution.transports.shared import PREFIX, SHM_DIR
from refit_core.planning.blocks import Block, pair_stream
from refit_core.planning.plan import Plan, RankPlan
from refit_core.planning.storage import Storage

IOV_MAX = 1024  # iovecs per call (Linux's UIO_MAXIOV)


@dataclass(frozen=True)
class Reachable:
    """What a rank tells its peers once: where it runs and where its source buffer is."""

    host: str
    pid: int
    address: int  # its source buffer's first byte in its address space (0: no source)
    nbytes: int
    barrier: str  # rank 0: where the host barrier is (hostbarrier.py); others: ""


def _readv() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        f = libc.process_vm_readv
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_ssize_t
    f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    return f


def iovecs(blocks: list[Block], local_base: int, remote_base: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(local, remote) iovec arrays (pairs of uint64: address, length) for `blocks`, a row each where a block is
    strided, one for a contiguous block; and the bytes they move."""
    local, remote = [], []
    for b in blocks:
        if b.src_stride == b.row_bytes == b.dst_stride:
            local.append(np.array([[local_base + b.dst, b.nbytes]], dtype=np.uint64))
            remote.append(np.array([[remote_base + b.src, b.nbytes]], dtype=np.uint64))
            continue
        rows = np.arange(b.rows, dtype=np.uint64)
        size = np.full(b.rows, b.row_bytes, dtype=np.uint64)
        local.append(np.stack([local_base + b.dst + rows * b.dst_stride, size], axis=1))
        remote.append(np.stack([remote_base + b.src + rows * b.src_stride, size], axis=1))
    if not local:
        return np.zeros((0, 2), np.uint64), np.zeros((0, 2), np.uint64), 0
    lo, re = np.ascontiguousarray(np.concatenate(local)), np.ascontiguousarray(np.concatenate(remote))
    return lo, re, int(lo[:, 1].sum())


def coalesce(iov: np.ndarray) -> np.ndarray:
    """Adjacent segments (one ending where the next begins) merged: fewer, longer segments for the kernel."""
    if len(iov) <= 1:
        return iov
    starts = np.ones(len(iov), dtype=bool)
    starts[1:] = iov[1:, 0] != iov[:-1, 0] + iov[:-1, 1]
    first = np.flatnonzero(starts)
    return np.ascontiguousarray(np.stack([iov[first, 0], np.add.reduceat(iov[:, 1], first)], axis=1))


def batches(lo: np.ndarray, re: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The row-for-row segments in calls of at most IOV_MAX rows, each side coalesced on its own (a read
    from a contiguous shard into a strided destination is one remote segment and many local ones)."""
    return [(coalesce(lo[i: i + IOV_MAX]), coalesce(re[i: i + IOV_MAX])) for i in range(0, len(lo), IOV_MAX)]


class CrossMemoryReads:
    """This rank's reads from its senders' source buffers, bound at set-up; `bind` returns None where the
    ranks are not all on this host or the kernel refuses the reads."""

    def __init__(self, group: object, reads: list[tuple[int, np.ndarray, np.ndarray, int]],
                 barrier: HostBarrier, readv: Callable[..., int]) -> None:
        self.barrier, self.readv = barrier, readv
        self._named = dist.get_rank(group) == 0  # rank 0 removes the barrier's names after the first one
        # per sender: its pid, the reads in calls of at most IOV_MAX rows, the bytes they move
        self.calls = [(pid, batches(lo, re), n) for pid, lo, re, n in reads]
        self.extra_bytes = sum(a.nbytes + b.nbytes for _, bs, _ in self.calls for a, b in bs)  # host memory

    @classmethod
    def bind(cls, plan: Plan, rank_plan: RankPlan, src: torch.Tensor | None, dst: torch.Tensor | None,
             dst_storage: Storage | None, layouts: Callable[[str, int], Storage | None],
             group: object, timeout_s: float) -> "CrossMemoryReads | None":
        """Tell the peers where this rank's source is, build the reads from theirs, try one byte from each
        (collective: two gathers). Rank 0 makes the host barrier the others open."""
        n, first, readv = dist.get_world_size(group), dist.get_rank(group) == 0, _readv()
        prefix = str(SHM_DIR / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}-barrier")
        barrier = _try_create(prefix, n, timeout_s) if first and readv is not None else None
        try:
            mine = Reachable(socket.gethostname(), os.getpid(), src.data_ptr() if src is not None else 0,
                             src.numel() if src is not None else 0, prefix if barrier is not None else "")
            every: list = [None] * n
            dist.all_gather_object(every, mine, group=group)
            if readv is None or not every[0].barrier or any(p.host != mine.host for p in every):
                return _discard(barrier)
            barrier = barrier or HostBarrier.open(every[0].barrier, n, timeout_s)
            barrier.watch({r: p.pid for r, p in enumerate(every)})
            out = cls(group, cls._reads(plan, rank_plan, dst, dst_storage, layouts, every, group), barrier, readv)
        except BaseException:
            _discard(barrier)
            raise
        verdicts: list = [None] * n
        dist.all_gather_object(verdicts, out._probe(), group=group)
        return out if all(verdicts) else _discard(out.barrier)

    @staticmethod
    def _reads(plan: Plan, rank_plan: RankPlan, dst: torch.Tensor | None, dst_storage: Storage | None,
               layouts: Callable[[str, int], Storage | None], every: list, group: object) -> list:
        reads = []
        for peer, ts in rank_plan.recvs.items():
            peer_src = layouts("source", peer)
            if peer_src is None or dst is None or dst_storage is None or not every[peer].address:
                raise TransportError(f"rank {dist.get_rank(group)}: rank {peer} sends to it but has no source buffer")
            _, blocks = pair_stream(plan, ts, peer_src, dst_storage, None)
            reads.append((every[peer].pid, *iovecs(blocks, dst.data_ptr(), every[peer].address)))
        return reads

    def _probe(self) -> bool:
        """One byte from each sender (into the byte it will be read into anyway): the kernel allows it."""
        for pid, calls, _ in self.calls:
            lo, re = calls[0]
            one_lo, one_re = np.array([[lo[0, 0], 1]], np.uint64), np.array([[re[0, 0], 1]], np.uint64)
            if self.readv(pid, one_lo.ctypes.data, 1, one_re.ctypes.data, 1, 0) != 1:
                return False
        return True

    def run(self, lap: Callable[[str], None], local: Callable[[], int] | None) -> int:
        """A barrier, the local copies, every read, a barrier. Phases: transfer (the barriers), local, read."""
        self.barrier.wait()
        lap("transfer")
        if self._named:  # every rank opened the barrier in bind, before this first wait
            self.barrier.unlink()
            self._named = False
        launches = local() if local is not None else 0
        if local is not None:
            lap("local")
        for pid, calls, nbytes in self.calls:
            got = 0
            for lo, re in calls:
                n = self.readv(pid, lo.ctypes.data, len(lo), re.ctypes.data, len(re), 0)  # type: ignore[misc]
                if n < 0:
                    raise TransportError(f"reading rank pid {pid}'s source failed: {os.strerror(ctypes.get_errno())}")
                got += n
            if got != nbytes:
                raise TransportError(f"read {got} of {nbytes} bytes from pid {pid}: its source buffer moved or ended")
            launches += 1
        if self.calls:
            lap("read")
        self.barrier.wait()
        lap("transfer")
        return launches

    def close(self) -> None:
        self.calls = []
        _discard(self.barrier)


def _try_create(prefix: str, n: int, timeout_s: float) -> HostBarrier | None:
    """Rank 0's host barrier, or None where this host has no POSIX semaphores (the ranks then stage, or use
    gloo's sockets)."""
    try:
        return HostBarrier.create(prefix, n, timeout_s)
    except (TransportError, OSError):
        return None


def _discard(barrier: HostBarrier | None) -> None:
    """Close `barrier` and remove its names (None: nothing to do); returns None, the bind's answer then."""
    if barrier is not None:
        barrier.unlink()
        barrier.close()
