"""The local controller of submitted runs: `python -m orchestrator.controller FOLDER`, started by the local
cluster (orchestrator/submission/clusters.py) in its own session, so Ctrl-C in the terminal reaches refitctl
only and the job keeps running.

It is submitit 1.5.4's local Controller (submitit is pinned to that version: pyproject.toml) with refitctl's
ways: several runs submitted together form a local "array" and run one after another; each run's ranks are
watched by the one rank supervisor (jobs/supervisor.py), as srun would; RUN_DIR/job-state.json says RUNNING,
then COMPLETED / FAILED / TIMEOUT / CANCELLED, so any later refitctl can tell what happened; RUN_DIR/
cancel-requested is honoured; at the end the run is finalized (results.json, CSVs, run.json's final state:
orchestrator/state/rundir.py), so a detached run is complete without anyone reading it. It sits above the
state layer for that last step, beside the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from submitit.core import utils as submitit_utils
from submitit.local.local import Controller

from jobs.supervisor import RankSupervisor
from refit_core import environment
from refit_core.environment import LOCAL_RUNS, free_port
from refit_core.errors import RefitError
from refit_core.jsonfile import NOFOLLOW, write_json_atomic
from refit_core.paths import CANCEL_FILE, RESULTS_FILE, STATE_FILE

log = logging.getLogger(__name__)


class RunController(Controller):  # pragma: no cover - runs in its own process
    """submitit's local controller, one run after another, with srun-like failure handling."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.runs = [(held_dir(Path(d)), int(n)) for d, n in json.loads(environment.get(LOCAL_RUNS) or "[]")]
        self.stop_all = False
        self.stop_signal: str | None = None  # what stopped the controller, if anything did
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stop_all = True
        self.stop_signal = signal.Signals(signum).name

    def run_all(self) -> None:
        base = self.pid
        for i, (run_dir, ntasks) in enumerate(self.runs):
            self.pid = base if len(self.runs) == 1 else f"{base}_{i}"
            self.ntasks = ntasks
            if self.stop_all or (run_dir / CANCEL_FILE).exists():
                write_state(run_dir / STATE_FILE, {"state": "CANCELLED", "detail": "cancelled before it started",
                                                   "ended": time.time(), "job_id": self.pid})
                continue
            self.run_one(run_dir)

    def run_one(self, run_dir: Path) -> None:
        """Start the run's tasks, watch them to their end, record and finalize it."""
        environment.export({"REFITCTL_MASTER_PORT": str(free_port())})
        started = time.time()
        reserve_state(run_dir / STATE_FILE, {"state": "RUNNING", "started": started, "job_id": self.pid,
                                             "controller_pid": os.getpid()}, self.ntasks)
        supervisor = RankSupervisor([], self.timeout_s, poll_s=0.1,
                                    cancelled=lambda: self.stop_all or ((run_dir / CANCEL_FILE).exists()
                                                                        and not _refit_done(run_dir)))
        try:
            self.start_tasks()
            supervisor.procs = list(self.tasks)
            outcome = supervisor.wait()
        finally:
            supervisor.procs = list(self.tasks)
            supervisor.stop()
            self.close_outputs()
        detail = stopped_detail(outcome.state, outcome.detail, self.stop_signal)
        write_state(run_dir / STATE_FILE, {"state": outcome.state, "detail": detail, "exit_codes": outcome.codes,
                                           "failed_ranks": outcome.failed, "started": started, "ended": time.time(),
                                           "job_id": self.pid})
        _finalize(run_dir, outcome.state, detail)

    def start_tasks(self) -> None:
        """submitit's, but each task leads its own process group, so stopping a task stops whatever it
        started too (nothing is left behind)."""
        self.folder.mkdir(exist_ok=True)
        paths = [submitit_utils.JobPaths(self.folder, self.pid, k) for k in range(self.ntasks)]
        self.stdouts = [p.stdout.open("a") for p in paths]
        self.stderrs = self.stdouts if self.stderr_to_stdout else [p.stderr.open("a") for p in paths]
        for k in range(self.ntasks):
            env = environment.child_environment({"SUBMITIT_LOCAL_LOCALID": str(k), "SUBMITIT_LOCAL_GLOBALID": str(k),
                                                 "SUBMITIT_LOCAL_JOB_ID": self.pid})
            self.tasks.append(subprocess.Popen(self.command, shell=False, env=env, stderr=self.stderrs[k],
                                               stdout=self.stdouts[k], encoding="utf-8", start_new_session=True))

    def close_outputs(self) -> None:
        self.tasks = []
        files = self.stdouts + self.stderrs
        self.stdouts, self.stderrs = [], []
        for f in files:
            f.close()


def _finalize(run_dir: Path, state: str, detail: str) -> None:
    """The run is over: results.json (if rank 0 wrote none), the CSVs, the final state in run.json, written
    here so a detached run is complete without anyone reading it (reading commands never write)."""
    from orchestrator.state.rundir import finalize
    from orchestrator.state.runfiles import read_run_info
    from orchestrator.submission.prepared import now_iso

    try:
        finalize(run_dir, read_run_info(run_dir), {"state": state, "detail": detail, "source": "local controller",
                                                   "ended": now_iso()})
    except (OSError, RefitError) as e:  # a full disk or a damaged run.json: job-state.json still says it
        with contextlib.suppress(OSError):  # its log may sit on the same full disk
            log.warning("%s: results not finalized: %s", run_dir, e)


def stopped_detail(state: str, detail: str, stop_signal: str | None) -> str:
    """Who stopped a CANCELLED run, in words: `refitctl cancel` (its request file), or a signal to the controller,
    never called a user's cancel (issue 25, item 14)."""
    if state != "CANCELLED":
        return detail
    if stop_signal:
        return f"the local controller received {stop_signal} (not `refitctl cancel`: a shutdown, a kill or a logout?)"
    return "cancelled by the user (refitctl cancel)"


def _refit_done(run_dir: Path) -> bool:
    """Rank 0 wrote a verified results.json: the refit is over, its ranks are only exiting. A cancel that
    arrives now must not turn a verified run into CANCELLED (issue 25, item 8)."""
    from refit_core.results import read_results

    try:
        return bool(read_results(run_dir / RESULTS_FILE)["verified"])
    except (OSError, RefitError, KeyError, TypeError):
        return False


def held_dir(run_dir: Path) -> Path:
    """The run directory by an open descriptor (/proc/self/fd/N): a directory moved while its run goes on is
    still the one the controller watches for a cancel and writes its state into, and the old path is never
    made again (issue 25, item 9). Where /proc is missing, or the directory is, the path itself."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return run_dir
    held = Path(f"/proc/self/fd/{fd}")
    if not held.is_dir():
        os.close(fd)
        return run_dir
    return held


STATE_RESERVE = 4096  # bytes job-state.json keeps, at least, for its final state on a full disk


def reserve_state(path: Path, data: dict[str, Any], ntasks: int) -> None:
    """The RUNNING state, written padded to the size the final state will need (exit codes and failed ranks
    of every task): the final write can then overwrite it in place when the disk is full (`write_state`)."""
    text = json.dumps(data, indent=1)
    size = max(STATE_RESERVE, len(text) + 24 * ntasks + 2048)
    write_json_atomic(path, data)
    with contextlib.suppress(OSError):
        with open(path, "r+b") as fh:
            fh.seek(0, os.SEEK_END)
            fh.write(b" " * max(0, size - fh.tell() - 1) + b"\n")  # JSON ignores the trailing spaces


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write job-state.json: atomically (write, rename) when the disk has room; on a full disk (ENOSPC,
    EDQUOT) over the bytes `reserve_state` kept, in place and padded, so the final state is recorded even
    then (issue 25, item 3). A state that does not fit them drops its exit codes and cuts its detail."""
    try:
        write_json_atomic(path, data)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        full = e
    try:
        size = path.stat().st_size
        short = {**data, "exit_codes": [], "failed_ranks": data.get("failed_ranks", [])[:16],
                 "detail": str(data.get("detail", ""))[:200]}
        text = next((t for t in (json.dumps(d, separators=(",", ":")).encode() for d in (data, short))
                     if len(t) < size), None)
        if text is None:
            raise full
        fd = os.open(path, os.O_WRONLY | NOFOLLOW)
        try:
            os.pwrite(fd, text + b" " * (size - len(text) - 1) + b"\n", 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        raise full from None


if __name__ == "__main__":  # the local controller: python -m orchestrator.controller FOLDER
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="refitctl controller: %(message)s")
    RunController(Path(sys.argv[1])).run_all()
