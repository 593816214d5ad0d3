"""The one rank supervisor: watches a job's rank processes on this machine the way srun does.

Used by every launcher that starts ranks itself: jobs/local.py (the tests' and a laptop's launcher) and the
local controller of submitted runs (orchestrator/controller.py). When a rank fails, the others get
`grace_s` to end on their own (srun --kill-on-bad-exit ends them at once; a short grace lets them record
why they stop), then they are stopped; at the time limit all are stopped; a cancel stops them at once.
Stopping is SIGTERM to each rank's whole process group (a rank leads its own session, so whatever it
started goes too), then SIGKILL after a few seconds: nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from refit_core.numbers import format_time

KILL_GRACE_S = 5.0  # how long the other ranks get after one fails, under every launcher
TERM_WAIT_S = 3.0  # between SIGTERM and SIGKILL when ranks are stopped


@dataclass(frozen=True)
class Outcome:
    """How a job's ranks ended: COMPLETED, FAILED, TIMEOUT or CANCELLED, in words, with each rank's exit code
    (None: still running when the job was stopped; negative: killed by that signal), the ranks in the order
    their failure was seen, and when each rank ended (wall clock, seen within one poll)."""

    state: str
    detail: str
    codes: list[int | None]
    failed: list[int]
    ended: list[float | None]


def failure_text(failed: list[int], codes: list[int | None]) -> str:
    """`rank 3 failed first, exit code 1 (then 2 more)`."""
    first, code = failed[0], codes[failed[0]]
    rest = f" (then {len(failed) - 1} more)" if len(failed) > 1 else ""
    how = f"killed by signal {-code} ({signal_name(-code)})" if code is not None and code < 0 else f"exit code {code}"
    return f"rank {first} failed first, {how}{rest}"


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown signal"


class RankSupervisor:
    """Rank processes (each leading its own process group) watched until they end, fail, time out or are cancelled."""

    def __init__(self, procs: Sequence["subprocess.Popen[bytes] | subprocess.Popen[str]"], timeout_s: float,
                 grace_s: float = KILL_GRACE_S, cancelled: Callable[[], bool] = lambda: False,
                 poll_s: float = 0.05) -> None:
        self.procs, self.timeout_s, self.grace_s = list(procs), timeout_s, grace_s
        self.cancelled, self.poll_s = cancelled, poll_s

    def wait(self) -> Outcome:
        """Poll until every rank ended, one failed and the grace passed, the time limit or a cancel."""
        start = time.monotonic()
        failed: list[int] = []
        ended: list[float | None] = [None] * len(self.procs)
        first_fail = 0.0
        while True:
            codes = [p.poll() for p in self.procs]
            for k, c in enumerate(codes):
                if c is not None and ended[k] is None:
                    ended[k] = time.time()
            new = [k for k, c in enumerate(codes) if c not in (None, 0) and k not in failed]
            if new and not failed:
                first_fail = time.monotonic()
            failed += new
            if all(c is not None for c in codes):  # before a cancel: one that comes after the end changes nothing
                state = "FAILED" if failed else "COMPLETED"
                return Outcome(state, failure_text(failed, codes) if failed else "", codes, failed, ended)
            if self.cancelled():
                return Outcome("CANCELLED", "cancelled by the user", codes, failed, ended)
            if failed and time.monotonic() - first_fail > self.grace_s:
                return Outcome("FAILED", failure_text(failed, codes) + "; the other ranks were stopped", codes, failed,
                               ended)
            if time.monotonic() - start > self.timeout_s:
                return Outcome("TIMEOUT", f"time limit of {format_time(self.timeout_s)} reached", codes, failed, ended)
            time.sleep(self.poll_s)

    def signal_all(self, signum: int) -> None:
        """`signum` to every rank's whole process group (the rank and whatever it started)."""
        for p in self.procs:
            try:
                os.killpg(p.pid, signum)
            except OSError:
                pass

    def stop(self) -> None:
        """SIGTERM (the ranks record why they stop), then SIGKILL after TERM_WAIT_S: every process group, also of
        ranks that ended (whatever they started and left behind)."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + TERM_WAIT_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        self.signal_all(signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
