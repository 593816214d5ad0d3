"""Which rank failed first, and why: from the rank records and what the executor saw of each process.

A rank that raises records its error; a rank killed by a signal (SIGKILL, the OOM killer, a lost node)
records nothing, and its peers then report only that a connection broke or a wait timed out. So the
records alone would name a victim. Here every active rank is classified:

- error:   its own error (an exception, a verification failure);
- killed:  no error recorded, but the executor saw it die by a signal (local controller's exit codes,
           srun's `task N: Killed` line);
- exit:    no error recorded, but it exited non-zero;
- timeout: its own watchdog ended it (its iteration outlasted --refit-timeout);
- peer:    an error that only says a peer went away or did not answer (gloo, NCCL, the store);
- stopped: ended by the scheduler or the controller (SIGTERM) after the job was already failing;
- silent:  the job failed, it did not finish, and there is no word from it at all.

The first failure is the first (in the order the executor saw them) of error/killed/exit, else of
timeout, else a rank that neither finished nor reported while its peers timed out waiting (a hang),
else the first peer error. A rank SIGKILLed after its peers had already timed out waiting is counted
as stopped: that is srun's KillWait for a hung rank that ignored SIGTERM, not the cause.
"""

from __future__ import annotations

import re
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from orchestrator.state.rundir import Progress, RankProgress
from orchestrator.state.runfiles import JobRecord, read_job_state
from refit_core.jsonfile import read_regular

PRIMARY = ("error", "killed", "exit")
FAILED_STATES = ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "UNKNOWN")
ENDED_BY_SCHEDULER = ("TIMEOUT", "CANCELLED", "PREEMPTED", "DEADLINE")
_PEER = re.compile(
    r"Connection (reset|closed|refused)|Broken pipe|Timed out waiting|Socket Timeout|Read error|Write error"
    r"|NCCL communicator was aborted|Watchdog caught collective operation timeout|ncclRemoteError"
    r"|remote process exited|DistNetworkError|DistStoreError|DistBackendError|peer (closed|died)",
    re.IGNORECASE)
_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_STOPPED = ("JobTerminated", "KeyboardInterrupt")
_WATCHDOG = "TimeoutError: "
_PHASE = re.compile(r"TimeoutError: (.+?) did not finish within")
_SRUN = re.compile(r"^srun: error: (?P<node>\S+): tasks? (?P<tasks>[0-9,\-]+): (?P<what>.+?)\s*$")
_SRUN_EXIT = re.compile(r"Exited with exit code (\d+)")


@dataclass(frozen=True)
class ProcessEnd:
    """How the executor saw one rank's process end: a signal, or an exit code."""

    signal: int | None = None
    code: int | None = None

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = "unknown signal"
            return f"killed by signal {self.signal} ({name})"
        return f"exited with code {self.code}"


@dataclass(frozen=True)
class RankFailure:
    rank: int
    role: str
    kind: str  # see the module docstring
    reason: str  # one line

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Diagnosis:
    first: RankFailure | None
    others: tuple[RankFailure, ...]  # every other rank that did not finish, in order
    stopped: int  # of those, ranks stopped by the scheduler or the controller

    def to_json(self) -> dict[str, Any]:
        return {"first_failure": self.first.to_json() if self.first else None,
                "rank_failures": [f.to_json() for f in (([self.first] if self.first else []) + list(self.others))]}


def short_error(text: str) -> str:
    """The first line of an error, without gloo's source location and its closing advice."""
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    line = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp|cu):\d+\]\s*", "", line)
    line = re.sub(r"\s*This is typically caused by .*$", "", line)
    return line.strip()


def classify(error: str | None, end: ProcessEnd | None, complete: bool, state: str) -> str | None:
    """The kind of one rank's ending (None: it finished, or the job is not over)."""
    if error:
        if error.startswith(_STOPPED):
            return "stopped"
        if error.startswith(_WATCHDOG) and "did not finish within" in error:
            return "timeout"
        return "peer" if _PEER.search(error) else "error"
    if complete:
        return None
    if state in ENDED_BY_SCHEDULER:
        return "stopped"  # the time limit, a cancel or a preemption ended it: not a failure of its own
    if end is not None and end.signal is not None:
        return "stopped" if end.signal == signal.SIGTERM else "killed"
    if end is not None and end.code not in (None, 0):
        return "exit"
    if state in FAILED_STATES:
        return "silent"
    return None


def diagnose(progress: Progress, ends: dict[int, ProcessEnd], order: Sequence[int], state: str) -> Diagnosis:
    """Classify every active rank that did not finish and pick the first failure (pure)."""
    by_rank = {r.rank: r for r in progress.ranks if r.rank < progress.active}
    seen = {r: i for i, r in enumerate(order)}
    rows: list[tuple[str, RankProgress | None, int]] = []
    for rank in range(progress.active):
        rec = by_rank.get(rank)
        kind = classify(rec.error if rec else None, ends.get(rank), bool(rec and rec.complete), state)
        if kind is not None:
            rows.append((kind, rec, rank))
    rows.sort(key=lambda x: (seen.get(x[2], len(seen)), x[1].mtime if x[1] else float("inf"), x[2]))
    # killed after peers had already timed out waiting: the scheduler's SIGKILL for a rank that ignored
    # SIGTERM (srun: KillWait), not the first failure
    waited = [seen[r] for kind, rec, r in rows if kind == "peer" and r in seen and _TIMED_OUT.search(rec.error or "")]
    rows = [("stopped" if kind == "killed" and waited and seen.get(r, -1) > min(waited) else kind, rec, r)
            for kind, rec, r in rows]
    peers = [rank for kind, _, rank in rows if kind == "peer"]

    def failure(kind: str, rec: RankProgress | None, rank: int, hang: bool = False) -> RankFailure:
        role = rec.role if rec else "?"
        where = _where(rec, progress)
        if hang:
            waiting = f"rank(s) {_ranks(sorted(peers))} timed out or lost the connection waiting for it"
            if kind == "timeout":
                return RankFailure(rank, role, "hang", f"hung in {where}: {waiting}; then its own watchdog ended it "
                                                       f"({short_error(rec.error or '') if rec else ''})")
            then = "it was stopped" if kind == "stopped" else "it ended without a record"
            return RankFailure(rank, role, "hang", f"hung in {where}: no error of its own while {waiting}; then {then}")
        if kind in ("killed", "exit"):
            why = "killed from outside: OOM killer, kill -9, a lost node?" if kind == "killed" else "see its log"
            return RankFailure(rank, role, kind, f"{ends[rank].describe()} in {where}, no error recorded ({why})")
        if kind == "silent":
            return RankFailure(rank, role, kind, f"ended in {where} with no error recorded and no exit "
                                                 "status known (killed from outside?)")
        text = short_error(rec.error or "") if rec else ""
        if kind == "peer":
            text += " (a peer failed or stopped answering)"
        return RankFailure(rank, role, kind, text)

    first = None
    for wanted in (PRIMARY, ("timeout",)):
        cands = [x for x in rows if x[0] in wanted]
        if cands:
            first = failure(*cands[0], hang=wanted == ("timeout",) and bool(peers))
            break
    if first is None and peers:
        # a rank that said nothing while its peers waited: hung if they timed out (or it was alive to be
        # stopped), died if they only lost the connection
        quiet = [x for x in rows if x[0] in ("stopped", "silent")]
        timed_out = any(_TIMED_OUT.search(x[1].error or "") for x in rows if x[0] == "peer" and x[1])
        if quiet:
            first = failure(*quiet[0], hang=timed_out or quiet[0][0] == "stopped")
    if first is None and peers:
        first = failure(*next(x for x in rows if x[0] == "peer"))
    others = tuple(failure(*x) for x in rows if first is None or x[2] != first.rank)
    return Diagnosis(first, others, sum(1 for f in others if f.kind == "stopped"))


def process_ends(run_dir: Path, job: JobRecord | None) -> tuple[dict[int, ProcessEnd], list[int]]:
    """What the executor saw of each rank's process (`job`: run.json's): (rank -> how it ended, ranks in
    the order they failed)."""
    if job is not None and job.cluster == "local":
        return _local_ends(run_dir)
    if job is not None and job.cluster == "slurm" and job.folder:
        return srun_ends(_srun_log(Path(job.folder), job.job_id))
    return {}, []


def _local_ends(run_dir: Path) -> tuple[dict[int, ProcessEnd], list[int]]:
    st = read_job_state(run_dir)  # checked: a damaged file is a RunDirError
    if st is None:
        return {}, []
    ends = {r: (ProcessEnd(signal=-c) if c < 0 else ProcessEnd(code=c))
            for r, c in enumerate(st.exit_codes) if c is not None and c != 0}
    return ends, list(st.failed_ranks)


def _srun_log(folder: Path, job_id: str) -> str:
    """srun's own messages land in the batch script's output: submitit's JOB_0_log.out (last attempt only)."""
    try:
        text = read_regular(folder / f"{job_id}_0_log.out").decode(errors="replace")
    except OSError:
        return ""
    marker = text.rfind("Starting with JobEnvironment")  # a requeued job appends: keep its last attempt
    return text[text.rfind("\n", 0, marker) + 1:] if marker >= 0 else text


def srun_ends(text: str) -> tuple[dict[int, ProcessEnd], list[int]]:
    """Parse `srun: error: node1: task 1: Killed` / `tasks 0,2: Terminated` / `Exited with exit code 1`."""
    ends: dict[int, ProcessEnd] = {}
    order: list[int] = []
    for line in text.splitlines():
        m = _SRUN.match(line.strip())
        if not m:
            continue
        what = m.group("what")
        code = _SRUN_EXIT.search(what)
        sig = {"Killed": signal.SIGKILL, "Terminated": signal.SIGTERM, "Aborted": signal.SIGABRT,
               "Segmentation fault": signal.SIGSEGV, "Bus error": signal.SIGBUS}.get(what)
        end = ProcessEnd(code=int(code.group(1))) if code else ProcessEnd(signal=int(sig) if sig else None, code=None)
        if end.signal is None and end.code is None:
            continue
        for rank in _task_list(m.group("tasks")):
            if rank not in ends:
                ends[rank] = end
                order.append(rank)
    return ends, order


def _task_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        if a.isdigit() and (not b or b.isdigit()):
            out.extend(range(int(a), int(b or a) + 1))
    return out


def _where(rec: RankProgress | None, progress: Progress) -> str:
    if rec is None:
        return "start-up (it wrote no record)"
    phase = _PHASE.match(rec.error or "")  # its watchdog named a phase before the iterations
    if phase and not phase.group(1).startswith("iteration"):
        return phase.group(1)
    k = rec.done
    if k < progress.warmup:
        return f"warm-up iteration {k + 1} of {progress.warmup}"
    if k - progress.warmup < progress.iterations:
        return f"iteration {k - progress.warmup} ({k - progress.warmup} of {progress.iterations} timed iterations done)"
    return "the end of the run"


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)
