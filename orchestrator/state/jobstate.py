"""Where a submitted run stands, and how to cancel it: from SLURM (squeue, sacct) or the local controller.

Every answer is a `JobState`; when the scheduler cannot say (no accounting, an unknown job id, a
controller that vanished), the state comes from the run directory and `detail` says so in plain
words: nothing here raises for a job that cannot be found.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.procs import RankProcess, environ_of, recorded_processes, stop_processes
from orchestrator.state import slurmcache, slurmquery
from orchestrator.state.rundir import CANCEL_FILE, STATE_FILE
from orchestrator.state.slurmquery import Look, QueueEntry, SlurmView
from orchestrator.state.runfiles import FinalState, JobRecord, RunInfo, read_job_state
from refit_core.errors import RunDirError
from refit_core.jsonfile import SymlinkRefused, write_file
from refit_core.results import read_results, write_json_atomic
from refit_core.environment import LOCAL_RANK_ID, LOCAL_RUNS

QUEUED = {"PENDING", "REQUEUED", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUBMITTED"}
ACTIVE = {"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
FINAL = {"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "UNKNOWN"}
_SUBMIT_GRACE_S = 60  # a job SLURM does not list yet, this soon after sbatch, is "SUBMITTED"
_CANCEL_TIMEOUT_S = 30  # scancel: an action the user waits for, not a look
NO_ANSWER = "NO_ANSWER"  # SLURM did not answer in time (slurmctld down or restarting): neither final nor queued

# SLURM's states in words: what happened, for the states whose name alone does not say it.
STATE_WORDS = {
    "NODE_FAIL": "a node of the job failed (its slurmd stopped answering slurmctld): SLURM ended the job and "
                 "the ranks on that node were lost; `refitctl sweep --resume` or a new submit runs it again",
    "PREEMPTED": "preempted by a job of higher priority and not requeued",
    "TIMEOUT": "the time limit was reached: SLURM sent SIGTERM, then SIGKILL after its grace period (KillWait)",
    "REQUEUED": "requeued (preempted, a node lost, or `scontrol requeue`): back in the queue, the refit starts "
                "again from scratch",
    "BOOT_FAIL": "a node of the job failed to boot",
    "OUT_OF_MEMORY": "a task ran out of memory",
    "DEADLINE": "the job's deadline passed",
}


@dataclass(frozen=True)
class JobState:
    state: str
    detail: str = ""
    source: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL

    @property
    def queued(self) -> bool:
        return self.state in QUEUED

    def describe(self) -> str:
        return self.state + (f" ({self.detail})" if self.detail else "")


def job_state(run_dir: Path, job: JobRecord | None, final: FinalState | None = None,
              slurm: Look | None = None) -> JobState:
    """The run's state from its scheduler (run.json's `job`); never submitted: run.json's `final`, else UNKNOWN.
    `slurm`: one look at many runs at once (tracking.slurm_look), instead of asking for this one."""
    if job is None:
        if final is not None:
            return JobState(final.state, final.detail, "run.json")
        return JobState("UNKNOWN", "never submitted (no job id in run.json)", "run.json")
    if job.cluster == "local":
        return _local_state(run_dir, job)
    return _slurm_state(run_dir, job, slurm)


# ----------------------------------------------------------------------------- local

def _local_state(run_dir: Path, job: JobRecord) -> JobState:
    st = read_job_state(run_dir)  # a damaged file: RunDirError, one line
    alive = _controller_alive(job.controller_pid)
    if st and st.state != "RUNNING":
        return JobState(st.state, st.detail, "local controller")
    if alive:
        queued = "waiting for the earlier runs of its array" if "_" in job.job_id else ""
        return JobState("RUNNING" if st else "PENDING", "" if st else queued, "local controller")
    if st is None and time.time() - job.submitted < 10:
        return JobState("SUBMITTED", "", "local controller")
    gone = f"the local controller (pid {job.controller_pid}) is gone without a final state"
    orphans = [p for p in rank_processes(run_dir) if p.is_running_here()]
    if orphans:
        return JobState("RUNNING", f"{gone}; {len(orphans)} rank(s) still running: `refitctl cancel` stops them",
                        "run directory")
    return _from_run_dir(run_dir, gone)


def rank_processes(run_dir: Path) -> list[RankProcess]:
    """The processes of RUN_DIR/procs/ that really are ranks of this run: besides pid, start time, boot id
    and host (all readable by anyone from /proc, so a planted file could name any process), the process was
    started by a local controller of this very run directory, as that rank (its environment says so).
    A planted procs/ file names nothing `cancel` would stop (issue 25, item 7)."""
    here = str(run_dir.resolve())
    out = []
    for p in recorded_processes(run_dir):
        env = environ_of(p.pid)
        if env is None or env.get(LOCAL_RANK_ID) != str(p.rank):
            continue
        try:
            runs = {str(Path(d).resolve()) for d, _ in json.loads(env.get(LOCAL_RUNS, "[]"))}
        except (ValueError, TypeError):
            continue
        if here in runs:
            out.append(p)
    return out


def _controller_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
            return True  # no /proc (macOS): trust the pid
        except OSError:
            return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"orchestrator.controller" in cmd


# ----------------------------------------------------------------------------- SLURM

def _run(cmd: list[str]) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=_CANCEL_TIMEOUT_S)
        return p.returncode, p.stdout, p.stderr.strip()
    except FileNotFoundError:
        return 127, "", f"{cmd[0]} not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{cmd[0]} did not answer in {_CANCEL_TIMEOUT_S} s"


# SLURM's pending reasons (squeue %r) in words, with what the user can change.
PENDING_REASONS = {
    "Resources": "waiting for nodes to free up: the job fits the partition, the nodes are busy",
    "Priority": "waiting behind jobs of higher priority",
    "PartitionConfig": "the partition cannot run this job as requested (nodes, GPUs or time above its limits): "
                       "cancel it and resubmit with a smaller request or another --partition",
    "PartitionNodeLimit": "more nodes than the partition allows: cancel it and use another --partition",
    "PartitionTimeLimit": "time limit above the partition's: cancel it and resubmit with a shorter --time",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved: wait, or cancel and use another --partition",
    "QOSMaxGRESPerUser": "your QOS allows fewer GPUs at once: wait for your other jobs, or use another --qos",
    "QOSMaxNodePerUserLimit": "your QOS allows fewer nodes at once: wait for your other jobs, or use another --qos",
    "AssocGrpGRES": "your account's GPU allowance is in use: wait, or use another --account",
    "Dependency": "waiting for a job it depends on",
    "BeginTime": "its start time has not come yet",
    "JobHeldUser": "held by a user: `scontrol release JOBID` lets it run",
    "JobHeldAdmin": "held by an administrator",
    "NodeDown": "a node it needs is down: wait, or cancel and use another --partition",
    "InvalidAccount": "the account is not valid here: cancel it and resubmit with a valid --account",
    "InvalidQOS": "the QOS is not valid here: cancel it and resubmit with a valid --qos",
}


def pending_reason(reason: str) -> str:
    """SLURM's reason code followed by what it means and what to change; unknown codes as they are."""
    words = PENDING_REASONS.get(reason)
    return f"{reason}: {words}" if words else reason


def _slurm_state(run_dir: Path, job: JobRecord, look: Look | None) -> JobState:
    """A SLURM job's state: remembered (slurmcache), else from `look` (one batched look at many runs,
    tracking.slurm_look) or, without one, from a look at this job alone. A final state read from
    accounting is remembered."""
    kept = slurmcache.cached(run_dir, job)
    if kept is not None:
        return JobState(kept[0], kept[1], "sacct (remembered)")
    view = look.view() if look is not None else slurmquery.ask([job.job_id], job.submitted)
    st = slurm_answer(run_dir, job, view)
    if st.source == "sacct" and st.final and st.state != "UNKNOWN":
        slurmcache.remember(run_dir, job, st.state, st.detail)
    return st


def slurm_answer(run_dir: Path, job: JobRecord, view: SlurmView) -> JobState:
    """What `view` says of `job`: the queue first (slurmctld), then accounting; when neither knows it, the
    run directory (and why); when SLURM did not answer, NO_ANSWER (not final: the next look asks again)."""
    jid = job.job_id
    q = view.queue.get(jid)
    a = view.acct.get(jid)
    if q is not None and q.state == "COMPLETING" and a is not None and a.state in FINAL:
        # this attempt is over (accounting has its end), its processes still being stopped: how it ended, and
        # whether the job goes on (requeued: the words of the end would say "not requeued")
        words = STATE_WORDS.get(a.state) if not q.restarts else None
        ended = f"ended {a.state}" + (f": {words}" if words else "") + "; SLURM is still stopping its processes"
        requeued = _queue_detail(QueueEntry(q.state, "None", q.restarts))
        return JobState(q.state, f"{requeued}; {ended}" if requeued else ended, "squeue")
    if q is not None:
        return JobState(q.state, _queue_detail(q), "squeue")
    if a is not None:
        if a.state in ACTIVE or a.state in QUEUED:
            return JobState(a.state, STATE_WORDS.get(a.state, ""), "sacct")
        numbers = f"exit code {a.exit_code}, elapsed {a.elapsed}" if a.state != "COMPLETED" else f"elapsed {a.elapsed}"
        words = STATE_WORDS.get(a.state)
        return JobState(a.state, f"{words}; {numbers}" if words else numbers, "sacct")
    qr, ar = view.queue_reply, view.acct_reply
    if qr.silent or (qr.ok and ar.silent):
        said = "; ".join(r.error for r in (qr, ar) if r.silent)
        return JobState(NO_ANSWER, f"SLURM did not answer ({said}): the state is asked again at the next look",
                        "squeue")
    if time.time() - job.submitted < _SUBMIT_GRACE_S and qr.ok:
        return JobState("SUBMITTED", "", "squeue")
    sacct_err = ar.error if not ar.ok else ""
    why = "; ".join(x for x in (f"squeue: {qr.error}" if not qr.ok else "",
                                f"sacct: {sacct_err}" if sacct_err else "sacct has no record of it") if x)
    return _from_run_dir(run_dir, f"SLURM no longer knows job {jid} ({why})")


def _queue_detail(q: QueueEntry) -> str:
    """squeue's reason in words, and the requeues so far."""
    if q.state in FINAL:  # over, still in slurmctld's memory: what happened, not why it would wait
        detail = STATE_WORDS.get(q.state, "")
    else:
        detail = pending_reason(q.reason) if q.reason not in ("None", "") else STATE_WORDS.get(q.state, "")
    if q.restarts:
        detail = f"requeued {q.restarts} time(s) (preempted, a node lost, or `scontrol requeue`): each attempt " \
            "starts the refit from scratch" + (f"; {detail}" if detail else "")
    return detail


def _from_run_dir(run_dir: Path, why: str) -> JobState:
    """The scheduler cannot say: tell what the run directory shows, and why."""
    try:
        res = read_results(run_dir / "results.json")
        if res["verified"]:
            return JobState("COMPLETED", f"{why}; results.json says verified", "run directory")
        return JobState("FAILED", f"{why}; results.json says not verified", "run directory")
    except FileNotFoundError:
        return JobState("UNKNOWN", f"{why}; no results.json", "run directory")
    except RunDirError as e:
        return JobState("UNKNOWN", f"{why}; {e.short()}", "run directory")


# ----------------------------------------------------------------------------- cancel

def cancel(run_dir: Path, info: RunInfo) -> str:
    """Cancel the run's job; returns what was done, in one line."""
    job = info.job
    if job is None:
        return f"{run_dir.name}: never submitted, nothing to cancel"
    st = job_state(run_dir, job, info.final)
    if st.final:
        return f"{run_dir.name}: already {st.state}, nothing to cancel"
    if job.cluster == "local":
        if not _controller_alive(job.controller_pid):
            return _stop_orphans(run_dir, job)
        try:
            write_file(run_dir / CANCEL_FILE, f"{time.time()}\n")
        except SymlinkRefused as e:
            raise RunDirError(Path(e.filename), "is a symbolic link, not refitctl's cancel request",
                              "remove it and cancel again") from None
        return f"{run_dir.name}: cancel requested from the local controller (pid {job.controller_pid})"
    rc, out, err = _run(["scancel", job.job_id])
    if rc != 0:
        return f"{run_dir.name}: scancel {job.job_id} failed: {err or out or rc}"
    if st.queued:  # SLURM keeps no accounting record of a pending array task cancelled before it was split off
        slurmcache.remember(run_dir, job, "CANCELLED", "cancelled by the user (scancel) before it started")
    return f"{run_dir.name}: scancel {job.job_id} sent"



def _stop_orphans(run_dir: Path, job: JobRecord) -> str:
    """The controller is gone: stop the rank processes the run recorded (pid + start time checked), and
    record the run CANCELLED."""
    stopped = stop_processes(rank_processes(run_dir))
    ranks = ", ".join(str(p.rank) for p in sorted(stopped, key=lambda p: p.rank))
    detail = (f"cancelled by the user after the local controller (pid {job.controller_pid}) was gone"
              + (f"; stopped rank(s) {ranks}" if stopped else ""))
    write_json_atomic(run_dir / STATE_FILE, {"state": "CANCELLED", "detail": detail, "ended": time.time(),
                                             "job_id": job.job_id})
    if not stopped:
        return f"{run_dir.name}: the local controller is gone and no rank is running; recorded as CANCELLED"
    return f"{run_dir.name}: the local controller is gone; stopped rank(s) {ranks} (pids checked by start time)"
