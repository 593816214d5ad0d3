"""Staged rounds through memory the peers share: the gloo transport between processes of one host.

Over gloo, every staged or zero-copy byte crosses loopback TCP: the sender's kernel copies it into a socket
buffer, the receiver's copies it out, in segments, with a system call and a wake-up for each. Processes of
one host can instead share the staging: each sender packs its round's chunks into a buffer of its own that
its receivers map (a file in /dev/shm), a barrier says the round is packed, each receiver unpacks its chunks
straight from the senders' buffers, and a second barrier says the buffers may be packed again. Two memory
copies per byte and two barriers per round, no byte through a socket; gloo carries only the barriers (and
the set-up gather). The blocks are the staged path's own (refit_core/planning/blocks.py, every byte staged),
so the bytes and their order are the same; the staging is bounded by the bucket as there.

`--gloo-shared-memory off` keeps every byte on gloo's sockets; a run on several hosts, a relayed plan or FP8
destinations (the sender quantises into its socket staging) use the sockets whatever the setting.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from refit_core.errors import TransportError
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
    path: str
    nbytes: int
    offsets: dict[tuple[int, int], tuple[int, int]]  # (round, receiver) -> (offset, bytes)
    rounds: int  # its own rounds: every rank runs the most any rank has (a barrier each is collective)


def lay_out(chunks: tuple[Chunk, ...]) -> list[tuple[int, int, int]]:
    """(peer, offset, bytes) of each chunk placed one after another, as the socket path's staging does."""
    where, off = [], 0
    for c in chunks:
        where.append((c.peer, off, c.nbytes))
        off += aligned(c.nbytes)
    return where


def map_file(path: str, nbytes: int, create: bool) -> tuple[torch.Tensor, mmap.mmap]:
    """A shared mapping of a staging file as bytes, its pages mapped at once (MAP_POPULATE: one call instead
    of a fault per page inside the first refit)."""
    fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
    try:
        if create:
            os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
    return torch.frombuffer(mm, dtype=torch.uint8), mm


class SharedRounds:
    """This rank's staged rounds bound to shared staging: pack into its own file, unpack from its senders'.

    Built with `bind`, which returns None where the ranks are not all on this host."""

    def __init__(self, group: object, stage: torch.Tensor, maps: list[mmap.mmap], path: Path,
                 rounds: list[tuple[Callable[[], int] | None, list[Callable[[], int]]]]) -> None:
        self.group, self.stage, self._maps, self._path, self.rounds = group, stage, maps, path, rounds
        self.extra_bytes = stage.numel()

    @classmethod
    def bind(cls, rb: RankBlocks, rank: int, src: torch.Tensor | None, dst: torch.Tensor | None, group: object,
             step: Callable[[list[Block], torch.Tensor, torch.Tensor], Callable[[], int]]) -> "SharedRounds | None":
        """Create this rank's staging file, tell the peers where its chunks are and map theirs (collective: one
        gather). `step(blocks, src, dst)` makes a copy step (the staged transport's)."""
        sends = [lay_out(r) for r in rb.sends]
        size = max((sum(aligned(n) for _, _, n in r) for r in sends), default=0) or 1
        path = SHM_DIR / f"{PREFIX}{uuid.uuid4().hex}"
        stage, mm = map_file(str(path), size, create=True) if SHM_DIR.is_dir() else (None, None)
        mine = Published(socket.gethostname(), str(path) if stage is not None else "", size,
                         {(k, peer): (off, n) for k, r in enumerate(sends) for peer, off, n in r}, rb.rounds)
        every: list = [None] * dist.get_world_size(group)
        try:
            dist.all_gather_object(every, mine, group=group)
            if any(p.host != mine.host or not p.path for p in every):
                path.unlink(missing_ok=True)
                return None
            peers, maps = cls._map_peers(rb, every)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        rounds: list[tuple[Callable[[], int] | None, list[Callable[[], int]]]] = []
        for k in range(max(p.rounds for p in every)):
            if k >= rb.rounds:  # nothing of this rank's own: it still meets the others' barriers
                rounds.append((None, []))
                continue
            pack = [b._replace(dst=b.dst + off) for c, (_, off, _) in zip(rb.sends[k], sends[k]) for b in c.blocks]
            unpack = [step([b._replace(src=b.src + cls._offset(every, c, k, rank)) for b in c.blocks], peers[c.peer],
                           dst) for c in rb.recvs[k]] if dst is not None else []
            rounds.append((step(pack, src, stage) if pack and src is not None else None, unpack))
        return cls(group, stage, [mm, *maps], path, rounds)

    @staticmethod
    def _offset(every: list, c: Chunk, k: int, rank: int) -> int:
        off, n = every[c.peer].offsets[(k, rank)]
        if n != c.nbytes:
            raise TransportError(f"rank {rank}: rank {c.peer} stages {n} bytes for it in round {k}, it expects "
                                 f"{c.nbytes}: the ranks planned different refits")
        return off

    @staticmethod
    def _map_peers(rb: RankBlocks, every: list) -> tuple[dict[int, torch.Tensor], list[mmap.mmap]]:
        """The staging files of the ranks this one receives from, mapped here."""
        peers, maps = {}, []
        try:
            for p in sorted({c.peer for r in rb.recvs for c in r}):
                peers[p], mm = map_file(every[p].path, every[p].nbytes, create=False)
                maps.append(mm)
        except OSError as e:
            raise TransportError(f"cannot map a peer's staging in {SHM_DIR} ({e}): run with "
                                 "--gloo-shared-memory off") from None
        return peers, maps

    def run(self, lap: Callable[[str], None], local: Callable[[], int] | None) -> int:
        """Every round (pack, barrier, unpack, barrier), the local copies after the first barrier; the copy
        launches. Phases: pack, transfer (the barriers: waiting for the peers), local, unpack."""
        launches = 0
        for k, (pack, unpack) in enumerate(self.rounds):
            if pack is not None:
                launches += pack()
                lap("pack")
            dist.barrier(group=self.group)
            lap("transfer")
            if self._path is not None:  # every peer mapped it in bind, before this barrier: it may go
                self._path.unlink(missing_ok=True)
                self._path = None
            if k == 0 and local is not None:
                launches += local()
                lap("local")
            for u in unpack:
                launches += u()
            if unpack:
                lap("unpack")
            dist.barrier(group=self.group)
            lap("transfer")
        if not self.rounds and local is not None:
            launches += local()
            lap("local")
        return launches

    def close(self) -> None:
        """Drop the mappings (and the file, if no refit ran)."""
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self.rounds, self.stage, self._maps = [], None, []

