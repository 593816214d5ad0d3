"""A barrier of the ranks of one host in shared memory: POSIX named semaphores and a counter in /dev/shm.

The memory paths of gloo on one host (shared.py, cma.py) synchronise once or twice a call. gloo's own barrier
goes over loopback TCP: measured on the 2-core CI machine, 0.27 ms between 2 ranks but 3.8 ms (median; 8 ms
at the 90th percentile) between 6 or 8, more than the bytes themselves take. Here a rank arriving takes a
mutex, counts itself in, and waits on a turnstile the last one opens for the others: one futex wake-up each.
Two turnstiles alternate from barrier to barrier, so a rank already at the next barrier cannot take a place
meant for one still leaving this one (to get there all n must have left this one). A wait is bounded by the
run's --refit-timeout and then raises, naming the barrier. The semaphores and the counter file are removed
once every rank has opened them (after the first barrier), like the staging files.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from pathlib import Path

from refit_core.errors import TransportError

O_CREAT, O_EXCL, ETIMEDOUT, EINTR = 0o100, 0o200, 110, 4
WATCH_S = 0.5  # how often a waiting rank looks whether its peers are still there


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.sem_open.restype = ctypes.c_void_p
        libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
        for f in ("sem_post", "sem_close"):
            getattr(libc, f).argtypes = [ctypes.c_void_p]
        libc.sem_timedwait.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Timespec)]
        libc.sem_unlink.argtypes = [ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    return libc


class HostBarrier:
    """`n` ranks of one host; rank 0 creates (`create`), the others open what it named (`open`)."""

    def __init__(self, prefix: str, n: int, timeout_s: float, creator: bool) -> None:
        """The barrier named by `prefix` (a path in /dev/shm: the counter file; its last part names the
        semaphores), made by its `creator`, opened by the others."""
        libc = _libc()
        if libc is None:
            raise TransportError("POSIX semaphores are not available here: run with --gloo-shared-memory off")
        names = [f"/{Path(prefix).name}-{x}".encode() for x in ("mutex", "turn0", "turn1")]
        counter = f"{prefix}-count"
        self.libc, self.names, self.counter, self.n, self.timeout_s = libc, names, counter, n, timeout_s
        flags = O_CREAT | O_EXCL if creator else 0
        self.sems = [libc.sem_open(name, flags, 0o600, 1 if i == 0 else 0) for i, name in enumerate(names)]
        if not all(self.sems):
            self.close()
            raise TransportError(f"cannot open the host barrier's semaphores ({os.strerror(ctypes.get_errno())}): "
                                 "run with --gloo-shared-memory off")
        fd = os.open(counter, os.O_RDWR | (os.O_CREAT | os.O_EXCL if creator else 0), 0o600)
        try:
            if creator:
                os.ftruncate(fd, 8)
            self._count = mmap.mmap(fd, 8, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self._k = 0  # barriers passed: which turnstile the next one uses
        self.peers: dict[int, int] = {}  # rank -> pid of the others, watched while waiting (`watch`)

    def watch(self, pids: dict[int, int]) -> None:
        """The other ranks' processes: a wait ends at once, naming the rank, when one of them has exited
        (a semaphore, unlike a socket, does not tell its waiters that a peer died)."""
        self.peers = {r: p for r, p in pids.items() if p != os.getpid()}

    @classmethod
    def create(cls, prefix: str, n: int, timeout_s: float) -> "HostBarrier":
        """Rank 0's: `prefix` names it for the others."""
        return cls(prefix, n, timeout_s, creator=True)

    @classmethod
    def open(cls, prefix: str, n: int, timeout_s: float) -> "HostBarrier":
        return cls(prefix, n, timeout_s, creator=False)

    def _wait(self, sem: int, what: str) -> None:
        """Take `sem`, looking every WATCH_S whether a peer has exited; bounded by the timeout."""
        deadline = time.time() + self.timeout_s
        while True:
            until = min(deadline, time.time() + WATCH_S)
            ts = _Timespec(int(until), int((until % 1) * 1e9))
            if self.libc.sem_timedwait(sem, ctypes.byref(ts)) == 0:
                return
            err = ctypes.get_errno()
            if err not in (EINTR, ETIMEDOUT):
                raise TransportError(f"host barrier: {os.strerror(err)}")
            gone = next(((r, p) for r, p in self.peers.items() if not Path(f"/proc/{p}").exists()), None)
            if gone is not None:
                raise TransportError(f"peer died: rank {gone[0]} (pid {gone[1]}) ended while this rank waited at "
                                     f"barrier {self._k} ({what})")
            if time.time() >= deadline:
                raise TransportError(f"Timed out waiting {self.timeout_s:g} s (--refit-timeout) for the other ranks "
                                     f"of this host at barrier {self._k} ({what}): a peer hung or died")

    def wait(self) -> None:
        """Return once all n ranks have called it (the k-th time for each)."""
        mutex, turn = self.sems[0], self.sems[1 + (self._k & 1)]
        self._wait(mutex, "its counter")
        count = struct.unpack_from("q", self._count)[0] + 1
        last = count == self.n
        struct.pack_into("q", self._count, 0, 0 if last else count)
        self.libc.sem_post(mutex)
        if last:
            for _ in range(self.n - 1):
                self.libc.sem_post(turn)
        else:
            self._wait(turn, "the others")
        self._k += 1

    def unlink(self) -> None:
        """Remove the names (every rank has opened them); the open handles work on."""
        for name in self.names:
            self.libc.sem_unlink(name)
        Path(self.counter).unlink(missing_ok=True)

    def close(self) -> None:
        for s in getattr(self, "sems", []):
            if s:
                self.libc.sem_close(s)
        self.sems = []
