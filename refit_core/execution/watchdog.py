"""One watchdog per rank, for the whole run: every wait is a named phase with a deadline.

`--refit-timeout T` bounds each phase of each rank: process-group init, CUDA device set-up, the
transport's set-up (NCCL communicators, NVSHMEM init), weight fill, every barrier, each iteration,
the final barrier, the teardown. gloo and NCCL waits time out by themselves after T; NVSHMEM's
init and its barrier kernels do not, nor does a rank stuck in its own code. So a thread checks the
armed phase: past T + GRACE_S it writes the error into the rank's record
("TimeoutError: NVSHMEM init did not finish within the --refit-timeout of 30 s on rank 2 ...") and
ends the process (exit code 3). The grace (2 s) lets the process groups' own timeouts fire first,
so a rank that waited on a hung peer reports the peer, and the hung rank reports itself; it is short
enough that the hung rank's own record is written before the local controller stops it (5 s after
the first rank fails).

The same thread watches the launcher: if the rank's parent process goes away (`kill -9` of the
local controller, a lost srun step), the rank records why and ends, instead of running on
orphaned.

A thread needs the GIL: a rank stuck in a C call that holds it cannot run the check. For that,
`faulthandler` (a C thread, no GIL) dumps every thread's stack to the rank's log and ends the
process BACKSTOP_S later; the record then has no error, and the phase is in the log.

The phases are also what the rank's record says it is doing: `on_phase(name)` is called whenever
a phase is armed (jobs/refit_job.py passes `RankRecordWriter.enter_phase`), so the record carries
the current phase, since when, and every phase entered with its wall time (docs/reliability.md,
"Phases"). The live view shows them while a run starts; docs/benchmarks.md measures start-up with
them. Iterations are one phase each for the watchdog but one phase in the record ("warm-up",
"iterations": `record_phase`), so recording costs nothing per iteration.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

GRACE_S = 2.0
BACKSTOP_S = 10.0
POLL_S = 0.2
EXIT_CODE = 3


def record_phase(phase: str) -> str:
    """The phase as the rank record names it: `iteration -1` (warm-up) -> 'warm-up', `iteration 3` ->
    'iterations'; every other phase as armed."""
    head, _, num = phase.partition(" ")
    if head == "iteration" and num.lstrip("-").isdigit():
        return "warm-up" if num.startswith("-") else "iterations"
    return phase


def process_start_time() -> float:
    """When this process started, as wall-clock time (Linux: /proc, to 10 ms; elsewhere: now)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/uptime", "rb") as fh:
            uptime = float(fh.read().split()[0])
        now = time.time()
        started = now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
        return started if 0 <= now - started < 86400 else now
    except (OSError, ValueError, IndexError):
        return time.time()


class Watchdog:
    """Arm it with a phase name before each wait; `stop()` at the end. `on_expire(error)` records the error."""

    def __init__(self, timeout_s: float, rank: int, on_expire: Callable[[str], None],
                 watch_parent: bool = True, grace_s: float = GRACE_S,
                 on_phase: Callable[[str], None] | None = None) -> None:
        self._on_phase = on_phase
        self.timeout_s, self.rank = timeout_s, rank
        self.limit_s = timeout_s + grace_s
        self._on_expire = on_expire
        self._parent = os.getppid() if watch_parent else None
        self._phase: str | None = None
        self._deadline = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="refit-watchdog", daemon=True)
        self._thread.start()

    @property
    def phase(self) -> str | None:
        return self._phase

    def arm(self, phase: str) -> None:
        with self._lock:
            self._phase, self._deadline = phase, time.monotonic() + self.limit_s
        faulthandler.dump_traceback_later(self.limit_s + BACKSTOP_S, exit=True)
        if self._on_phase is not None:
            self._on_phase(record_phase(phase))

    def disarm(self) -> None:
        with self._lock:
            self._phase = None
        faulthandler.cancel_dump_traceback_later()

    def stop(self) -> None:
        self.disarm()
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(POLL_S):
            with self._lock:
                phase, late = self._phase, self._phase is not None and time.monotonic() > self._deadline
            if late:
                self._expire(f"TimeoutError: {phase} did not finish within the --refit-timeout of {self.timeout_s:g} s "
                             f"on rank {self.rank} (this rank hung, or a peer died or hung: see the other ranks' errors)")
            if self._parent is not None and os.getppid() != self._parent:
                self._expire(f"JobTerminated: the process that started rank {self.rank} (pid {self._parent}) is gone "
                             f"(a killed controller or a lost job step){f' during {phase}' if phase else ''}: "
                             "the rank stopped instead of running on orphaned")

    def _expire(self, error: str) -> None:
        try:
            self._on_expire(error)
        finally:
            log.error(error)
            os._exit(EXIT_CODE)
