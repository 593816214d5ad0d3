"""What SLURM says about many jobs at once: one `squeue` and one `sacct`, in parallel, both bounded by
one deadline.

`status`, `runs`, a sweep's table and `--watch` look at many runs; asking SLURM once per run costs one
round trip per run (and up to the full timeout per run when slurmctld does not answer). Here the job
ids of every run are asked in one go, and every query ends by `QUERY_BUDGET_S` whatever the cluster
does: a query that has not answered by then is killed and reads as no answer (`Reply.silent`), as
does a controller that cannot be reached; the caller shows it as such (jobstate: NO_ANSWER, not a
final state: the next look asks again). Parsing is pure; only `start` (and `ask`) run commands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Sequence

QUERY_BUDGET_S = 1.0  # the longest one look at any number of runs waits for SLURM (docs/reliability.md)
SQUEUE_FORMAT = "JobArrayID:|,State:|,Reason:|,RestartCnt:"  # array tasks as A_I
SACCT_FIELDS = "JobID,State,ExitCode,Elapsed"
# What squeue/sacct say when slurmctld/slurmdbd cannot be reached (down, restarting): no answer, not "no job".
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
               "Unable to connect to database", "slurmdbd: Connection")


@dataclass(frozen=True)
class Reply:
    """One command's answer: its output, or why there is none (`error`)."""

    ok: bool
    out: str = ""
    error: str = ""
    silent: bool = False  # no answer in time, or the controller could not be reached: ask again later


@dataclass(frozen=True)
class QueueEntry:
    state: str
    reason: str
    restarts: int  # times SLURM requeued the job (preempted, a node lost, `scontrol requeue`)


@dataclass(frozen=True)
class AcctEntry:
    state: str
    exit_code: str
    elapsed: str


@dataclass(frozen=True)
class SlurmView:
    """SLURM's answer for a set of job ids. A job missing from `queue` is not in slurmctld's memory
    (if `queue_reply.ok`); one missing from `acct` has no accounting record (if `acct_reply.ok`)."""

    queue: dict[str, QueueEntry] = field(default_factory=dict)
    acct: dict[str, AcctEntry] = field(default_factory=dict)
    queue_reply: Reply = Reply(False, error="not asked")
    acct_reply: Reply = Reply(False, error="not asked")


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    out = {}
    for line in text.splitlines():
        parts = [x.strip() for x in line.split("|")]
        if len(parts) >= 3 and parts[0]:
            restarts = parts[3] if len(parts) > 3 else ""
            out[parts[0]] = QueueEntry(parts[1], parts[2], int(restarts) if restarts.isdigit() else 0)
    return out


def parse_sacct(text: str) -> dict[str, AcctEntry]:
    """sacct -X -P lines; a job id listed twice (an id SLURM reused) keeps its newest record, the last."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 4 and parts[0]:
            state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
            out[parts[0]] = AcctEntry(state, parts[2], parts[3])
    return out


def commands(job_ids: Sequence[str], since: float) -> dict[str, list[str]]:
    """The two queries for `job_ids` (submitted no earlier than `since`, a Unix time)."""
    ids = ",".join(job_ids)
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 300))
    return {"squeue": ["squeue", "-h", "-j", ids, "-O", SQUEUE_FORMAT],
            "sacct": ["sacct", "-X", "-n", "-P", "-j", ids, "-S", start, "-o", SACCT_FIELDS]}


class Look:
    """A look under way: the queries run from `start` on, while the caller reads its run directories; `view()`
    collects them (once) by the deadline fixed at the start."""

    def __init__(self, cmds: dict[str, list[str]], budget_s: float) -> None:
        self.budget_s = budget_s
        self.deadline = time.monotonic() + budget_s
        self.procs = {name: _start(cmd) for name, cmd in cmds.items()}
        self.names = {name: cmd[0] for name, cmd in cmds.items()}
        self._view: SlurmView | None = None

    def view(self) -> SlurmView:
        if self._view is None:
            replies = {n: _collect(p, self.names[n], self.deadline, self.budget_s) for n, p in self.procs.items()}
            q, a = replies["squeue"], replies["sacct"]
            if not q.ok and "Invalid job id" in q.error:  # squeue's answer when it knows none of one id: no job
                q = Reply(True)
            self._view = SlurmView(parse_squeue(q.out) if q.ok else {}, parse_sacct(a.out) if a.ok else {}, q, a)
        return self._view

    def __del__(self) -> None:  # a look nobody collected (every run it was for turned out broken)
        for p in self.procs.values():
            if isinstance(p, subprocess.Popen) and p.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)


def start(job_ids: Sequence[str], since: float, budget_s: float = QUERY_BUDGET_S) -> Look:
    """Start one look at `job_ids` (submitted no earlier than `since`): both queries at once."""
    return Look(commands(sorted(set(job_ids)), since), budget_s)


def ask(job_ids: Sequence[str], since: float, budget_s: float = QUERY_BUDGET_S) -> SlurmView:
    """One look at `job_ids`, its answer within `budget_s`."""
    return start(job_ids, since, budget_s).view() if job_ids else SlurmView()


def _start(cmd: list[str]) -> "subprocess.Popen[str] | Reply":
    try:  # its own session: a query past the deadline is killed with whatever it started (a site's wrapper)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError:
        return Reply(False, error=f"{cmd[0]} not found")
    except OSError as e:
        return Reply(False, error=f"{cmd[0]}: {e.strerror or e}")


def _collect(p: "subprocess.Popen[str] | Reply", name: str, deadline: float, budget_s: float) -> Reply:
    if isinstance(p, Reply):
        return p
    try:
        out, err = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return Reply(False, error=f"{name} did not answer within {budget_s:g} s", silent=True)
    if p.returncode != 0:
        last = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
        error = last[-1] if last else f"{name} exit code {p.returncode}"
        return Reply(False, out, error, silent=any(u in error for u in UNREACHABLE))
    return Reply(True, out)
