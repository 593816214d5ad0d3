"""Staged rounds through memory the peers share: the gloo transport between processes of one host.

Over gloo, every staged or zero-copy byte crosses loopback TCP: the sender's kernel copies it into a socket
buffer, the receiver's copies it out, in segments, with a system call and a wake-up for each. Processes of
one host can instead share the staging: each sender packs its round's chunks into a buffer of its own that
its receivers map (a file in /dev/shm), a barrier says the round is packed, each receiver unpacks its chunks
straight from the senders' buffers; the next round packs into the other half of the staging, so one barrier
per round suffices (SharedRounds.run says why). Two memory copies per byte, no byte through a socket; gloo
carries only the barriers (and the set-up gather). The blocks are the staged path's own (refit_core/planning/blocks.py, every byte staged),
so the bytes and their order are the same; the staging is bounded by the bucket as there.

`--gloo-shared-memory off` keeps every byte on gloo's sockets; a run on several hosts, a relayed plan or FP8
destinations (the sender quantises into its socket staging) use the sockets whatever the setting.

The same rounds serve NVSHMEM where the bytes are the caller's (refit_core/library): the staging is then a
buffer in NVSHMEM's symmetric heap (`HeapStages`, transports/nvshmem.py) that the receivers map, and the
copies are the staged transport's CUDA kernels; `StageMemory` is what the two kinds of memory provide.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist

from refit_core.errors import TransportError
from refit_core.execution.transports.hostbarrier import HostBarrier
from refit_core.planning.blocks import Block, Chunk, RankBlocks
from refit_core.planning.storage import aligned

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
PREFIX = "refitctl-stage-"


@dataclass(frozen=True)
class Published:
    """What a rank tells its peers once: its host, its staging file and where each round's chunk for each
    receiver starts in it."""

    host: str
    where: str  # what a peer needs to map it (a file's path; "heap": NVSHMEM's); empty: cannot share
    nbytes: int
    offsets: dict[tuple[int, int], tuple[int, int]]  # (round, receiver) -> (offset, bytes)
    rounds: int  # its own rounds: every rank runs the most any rank has (a barrier each is collective)
    pid: int = 0  # its process (the host barrier watches it)


def lay_out(chunks: tuple[Chunk, ...]) -> list[tuple[int, int, int]]:
    """(peer, offset, bytes) of each chunk placed one after another, as the socket path's staging does."""
    where, off = [], 0
    for c in chunks:
        where.append((c.peer, off, c.nbytes))
        off += aligned(c.nbytes)
    return where


MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23  # Linux 5.14+ (Python 3.11's mmap names neither)


def map_file(path: str, nbytes: int, create: bool, populate: int = 0) -> tuple[torch.Tensor, mmap.mmap]:
    """A shared mapping of a staging file as bytes. Its first `populate` bytes are mapped at once, in one call
    instead of a fault per page inside the first refit (the creator allocates them; a reader maps the pages the
    creator made); the rest fault in at first use. Where the kernel cannot, every page faults in at first use."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    if populate:
        try:
            mm.madvise(MADV_POPULATE_WRITE if create else MADV_POPULATE_READ, 0, min(populate, nbytes))
        except (OSError, ValueError):
            pass
    return torch.frombuffer(mm, dtype=torch.uint8), mm


class StageMemory(Protocol):
    """Memory a rank stages into and its peers read: made before the one gather (`create`, which returns what
    a peer needs to map it, empty where this rank cannot share) or after it (`mine`, NVSHMEM's symmetric
    heap, whose size every PE must agree on)."""

    def create(self, nbytes: int) -> str: ...

    def mine(self, every: list[Published]) -> torch.Tensor: ...

    def peer(self, rank: int, every: list[Published]) -> torch.Tensor: ...

    def barrier(self) -> None: ...

    def mapped(self) -> None: ...  # every peer has mapped this rank's memory

    def close(self) -> None: ...


def remove_stale() -> list[Path]:
    """Remove the staging files whose process is gone (a rank killed between making its file and the first
    barrier, where its receivers have mapped it and it removes it); the files removed."""
    gone = []
    for f in [*SHM_DIR.glob(f"{PREFIX}*"), *SHM_DIR.glob(f"sem.{PREFIX}*")]:  # files, the barriers' semaphores
        pid = f.name.removeprefix("sem.")[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


class ShmStages:
    """Staging files in /dev/shm: created by their sender (named by its pid), mapped by its receivers, removed
    once all have mapped them (the mappings live on), so no file outlives a run however it ends after that; one
    left by a rank killed before then is removed by the next run on the host (`remove_stale`)."""

    def __init__(self, group: object, timeout_s: float) -> None:
        self.group, self.timeout_s = group, timeout_s
        self.rank, self.n = dist.get_rank(group), dist.get_world_size(group)
        self.path: Path | None = None
        self.stage: torch.Tensor | None = None
        self._maps: list[mmap.mmap] = []
        self.host_barrier: HostBarrier | None = None  # rank 0 makes it beside its file, the others open it

    def create(self, nbytes: int) -> str:
        if not SHM_DIR.is_dir():
            return ""
        remove_stale()
        self.path = SHM_DIR / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        self.stage, mm = map_file(str(self.path), nbytes, create=True, populate=nbytes // 2)  # the first half
        self._maps.append(mm)
        if self.rank == 0:
            try:
                self.host_barrier = HostBarrier.create(f"{self.path}-barrier", self.n, self.timeout_s)
            except (TransportError, OSError):  # no POSIX semaphores here: nobody shares, gloo's sockets serve
                return ""
        return str(self.path)

    def mine(self, every: list[Published]) -> torch.Tensor:
        assert self.stage is not None
        if self.host_barrier is None:
            self.host_barrier = HostBarrier.open(f"{every[0].where}-barrier", self.n, self.timeout_s)
        self.host_barrier.watch({r: p.pid for r, p in enumerate(every)})
        return self.stage

    def peer(self, rank: int, every: list[Published]) -> torch.Tensor:
        try:
            t, mm = map_file(every[rank].where, every[rank].nbytes, create=False, populate=every[rank].nbytes // 2)
        except OSError as e:
            raise TransportError(f"cannot map rank {rank}'s staging in {SHM_DIR} ({e}): run with "
                                 "--gloo-shared-memory off") from None
        self._maps.append(mm)
        return t

    def barrier(self) -> None:
        assert self.host_barrier is not None
        self.host_barrier.wait()

    def mapped(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
            if self.rank == 0 and self.host_barrier is not None:  # every rank opened it before this barrier
                self.host_barrier.unlink()

    def close(self) -> None:
        self.mapped()
        if self.host_barrier is not None:
            self.host_barrier.close()
            self.host_barrier = None
        self.stage, self._maps = None, []


Round = tuple["Callable[[], int] | None", "list[Callable[[], int]]"]
"""One round on one half of the staging: this rank's pack step (None: it sends nothing) and its unpack steps."""


class SharedRounds:
    """This rank's staged rounds bound to shared staging: pack into its own, unpack from its senders'.

    Built with `bind`, which returns None where the ranks cannot all share (not on one host)."""

    def __init__(self, memory: StageMemory, stage: torch.Tensor, rounds: list[tuple[Round, Round]]) -> None:
        self.memory, self.stage, self.rounds = memory, stage, rounds  # each round's steps for either half
        self.extra_bytes = stage.numel()
        self._mapped = False
        self._turn = 0  # rounds run so far: which half the next one uses

    @classmethod
    def bind(cls, rb: RankBlocks, rank: int, src: torch.Tensor | None, dst: torch.Tensor | None, group: object,
             step: Callable[[list[Block], torch.Tensor, torch.Tensor], Callable[[], int]],
             memory: StageMemory) -> "SharedRounds | None":
        """Make this rank's staging, tell the peers where its chunks are and map theirs (collective: one
        gather). `step(blocks, src, dst)` makes a copy step (the staged transport's)."""
        sends = [lay_out(r) for r in rb.sends]
        half = max((sum(aligned(n) for _, _, n in r) for r in sends), default=0) or 1
        try:
            mine = Published(socket.gethostname(), memory.create(2 * half), 2 * half,
                             {(k, peer): (off, n) for k, r in enumerate(sends) for peer, off, n in r}, rb.rounds,
                             os.getpid())
            every: list = [None] * dist.get_world_size(group)
            dist.all_gather_object(every, mine, group=group)
            if any(p.host != mine.host or not p.where for p in every):
                memory.close()
                return None
            stage = memory.mine(every)
            peers = {p: memory.peer(p, every) for p in sorted({c.peer for r in rb.recvs for c in r})}
        except BaseException:
            memory.close()
            raise
        rounds: list[tuple[Round, Round]] = []
        for k in range(max(p.rounds for p in every)):
            if k >= rb.rounds:  # nothing of this rank's own: it still meets the others' barriers
                rounds.append(((None, []), (None, [])))
                continue
            rounds.append(tuple(  # type: ignore[arg-type]
                (step([b._replace(dst=b.dst + off + h * half) for c, (_, off, _) in zip(rb.sends[k], sends[k])
                       for b in c.blocks], src, stage) if sends[k] and src is not None else None,
                 [step([b._replace(src=b.src + cls._offset(every, c, k, rank) + h * (every[c.peer].nbytes // 2))
                        for b in c.blocks], peers[c.peer], dst) for c in rb.recvs[k]] if dst is not None else [])
                for h in (0, 1)))
        return cls(memory, stage, rounds)

    @staticmethod
    def _offset(every: list, c: Chunk, k: int, rank: int) -> int:
        off, n = every[c.peer].offsets[(k, rank)]
        if n != c.nbytes:
            raise TransportError(f"rank {rank}: rank {c.peer} stages {n} bytes for it in round {k}, it expects "
                                 f"{c.nbytes}: the ranks planned different refits")
        return off

    def run(self, lap: Callable[[str], None], local: Callable[[], int] | None) -> int:
        """Every round: pack into this round's half, a barrier, unpack from the senders' same half; the local
        copies after the first barrier; the copy launches. The halves alternate from round to round (across
        calls too, every rank counting the same rounds), so a sender packs a half again only two rounds later,
        after a barrier each receiver meets only once done reading it: one barrier per round, none closing.
        Phases: pack, transfer (the barrier: waiting for the peers), local, unpack."""
        launches = 0
        for k, halves in enumerate(self.rounds):
            pack, unpack = halves[self._turn & 1]
            self._turn += 1
            if pack is not None:
                launches += pack()
                lap("pack")
            self.memory.barrier()
            lap("transfer")
            if not self._mapped:  # every peer mapped this rank's staging in bind, before this barrier
                self.memory.mapped()
                self._mapped = True
            if k == 0 and local is not None:
                launches += local()
                lap("local")
            for u in unpack:
                launches += u()
            if unpack:
                lap("unpack")
        if not self.rounds and local is not None:
            launches += local()
            lap("local")
        return launches

    def close(self) -> None:
        """Drop the steps and the staging (its file too, if no refit ran)."""
        self.rounds = []
        self.memory.close()

