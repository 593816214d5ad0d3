"""Every wait bounded, no rank orphaned (issue 13 item 2, issue 15 item 6), on the CPU through gloo.

A rank held before the process group exists ends the run within --refit-timeout plus the grace, the
record names the phase, `status`/`results` show it in one line, and no process is left. A killed
local controller does not leave its ranks running; `cancel` stops ranks whose controller is gone;
a run whose ranks wrote a verified results.json reads as verified without its controller.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refit_core.records import load_rank_record, rank_path

from jobs.procs import boot_id, recorded_processes, start_ticks
from jobs.supervisor import KILL_GRACE_S
from refit_core.execution.watchdog import GRACE_S
from helpers import FAULT_AT, SMALL, only_run, refitctl, run_json

TIMEOUT_S = 10


def _no_process_left(d: Path) -> None:
    procs = recorded_processes(d)
    assert procs, "the ranks recorded no process"
    assert not [p for p in procs if p.is_running_here()], "a rank's process is still running"


def test_a_rank_held_before_init_ends_the_run_in_time(tmp_path: Path) -> None:
    """config-4 in a world of 5 (2 idle ranks); rank 1 sleeps before joining the process group."""
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "5", "--refit-method", "gloo", "--poll", "0.5",
                 "--refit-timeout", str(TIMEOUT_S), "--env", "REFITCTL_FAULT=hang:rank=1:phase=init", *SMALL,
                 runs=tmp_path, check=1)
    assert "FAILED" in p.stdout and "NOT verified" in p.stdout
    d = only_run(tmp_path)
    fault_at = float(FAULT_AT.search((d / "logs" / "rank-00001.log").read_text()).group(1))
    ended = json.loads((d / "job-state.json").read_text())["ended"]
    assert 0 < ended - fault_at < TIMEOUT_S + GRACE_S + KILL_GRACE_S + 8, f"ended {ended - fault_at:.1f} s after"
    _no_process_left(d)
    rec = load_rank_record(rank_path(d, 1))
    assert rec.error.startswith("TimeoutError: process-group init (gloo) did not finish within the "
                                   f"--refit-timeout of {TIMEOUT_S} s on rank 1 "), rec.error
    for idle in (3, 4):  # idle ranks took part in nothing and did not fail
        rec = load_rank_record(rank_path(d, idle))
        assert rec.complete and rec.error is None
    status = refitctl("status", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert "first failure: rank 1 (source): hung in process-group init (gloo): rank(s) 0, 2 timed out" in status, status
    res = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert res["first_failure"]["rank"] == 1 and res["first_failure"]["kind"] == "hang"
    assert "process-group init (gloo) did not finish" in res["first_failure"]["reason"]


def _wait_for(what: str, cond, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_killed_controller_leaves_no_rank_running(tmp_path: Path) -> None:
    """kill -9 of the local controller while rank 2 hangs (--refit-timeout 120): every rank stops within seconds."""
    refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--detach",
             "--refit-timeout", "120", "--env", "REFITCTL_FAULT=hang:rank=2:iteration=1", *SMALL, runs=tmp_path, check=0)
    d = only_run(tmp_path)
    log = d / "logs" / "rank-00002.log"
    _wait_for("the fault", lambda: log.exists() and "test fault hang injected" in log.read_text())
    _wait_for("every rank's process record", lambda: len(recorded_processes(d)) == 3)
    controller = run_json(d)["job"]["controller_pid"]
    os.kill(controller, signal.SIGKILL)
    killed = time.monotonic()
    _wait_for("the ranks to stop", lambda: not any(p.is_running_here() for p in recorded_processes(d)), timeout=30)
    assert time.monotonic() - killed < 10
    for r in range(3):
        err = load_rank_record(rank_path(d, r)).error or ""
        assert err.startswith(f"JobTerminated: the process that started rank {r} ") or "Connection" in err, err
    status = refitctl("status", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert "the local controller" in status and "is gone" in status
    assert refitctl("cancel", d.name, runs=tmp_path, check=0).returncode == 0


def test_cancel_stops_the_ranks_of_a_run_whose_controller_is_gone(tmp_path: Path) -> None:
    """Three recorded processes: one is the rank (pid and start time match, started for this run as rank 0),
    one a reused pid (start time differs), one a stranger whose pid, start time, host and boot id match (all
    readable from /proc) but that no controller of this run started (issue 25, item 7)."""
    from refit_core.environment import LOCAL_RANK_ID, LOCAL_RUNS
    from orchestrator.configs import resolve
    from orchestrator.state.rundir import update_run, write_run
    from orchestrator.submission.clusters import LOCAL, Facts
    from orchestrator.submission.prepared import PreparedRun
    from orchestrator.submission.runspec import ClusterOptions, make_spec

    d = tmp_path / "orphan-run"
    cfg = resolve("config-4").with_changes(method="gloo", gpus=3)
    spec = make_spec("orphan-run", cfg, LOCAL, ClusterOptions(cluster="local"), {}, True, Facts(0, False, None, 1))
    write_run(d, PreparedRun.of(spec), "refitctl submit config-4")
    (d / "procs").mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    update_run(d, job={"cluster": "local", "job_id": str(gone.pid), "folder": str(d), "submitted": 0,
                       "controller_pid": gone.pid})
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    rank = subprocess.Popen(sleep, env={**os.environ, LOCAL_RUNS: json.dumps([[str(d), 3]]), LOCAL_RANK_ID: "0"})
    other = subprocess.Popen(sleep)
    stranger = subprocess.Popen(sleep)
    try:
        _wait_for("start times", lambda: None not in (start_ticks(rank.pid), start_ticks(other.pid),
                                                     start_ticks(stranger.pid)))
        host, boot = socket.gethostname(), boot_id()
        for r, p, ticks in ((0, rank, start_ticks(rank.pid)), (1, other, start_ticks(other.pid) - 1),  # type: ignore[operator]
                            (2, stranger, start_ticks(stranger.pid))):
            (d / "procs" / f"rank-{r:05d}.json").write_text(json.dumps(
                {"rank": r, "host": host, "pid": p.pid, "start_ticks": ticks, "boot_id": boot}))
        out = refitctl("cancel", d.name, runs=tmp_path, check=0).stdout
        assert out == "orphan-run: the local controller is gone; stopped rank(s) 0 (pids checked by start time)\n"
        assert rank.wait(timeout=10) == -signal.SIGTERM
        assert other.poll() is None  # not the process rank 1 recorded: left alone
        assert stranger.poll() is None  # not started as a rank of this run: left alone
        state = json.loads((d / "job-state.json").read_text())
        assert state["state"] == "CANCELLED" and "stopped rank(s) 0" in state["detail"]
    finally:
        for p in (rank, other, stranger):
            p.kill()
            p.wait()


def test_verified_results_read_as_verified_without_the_controller(tmp_path: Path) -> None:
    refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
             *SMALL, runs=tmp_path, check=0)
    done = only_run(tmp_path)
    d = tmp_path / "controller-killed"
    shutil.copytree(done, d)
    shutil.rmtree(done)
    info = run_json(d)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    info.update(final=None, job={**info["job"], "controller_pid": gone.pid})
    (d / "run.json").write_text(json.dumps(info))
    (d / "job-state.json").write_text(json.dumps({"state": "RUNNING", "started": 0, "job_id": "1"}))
    status = refitctl("status", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert "COMPLETED" in status and "results.json says verified" in status, status
    res = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=0).stdout)
    assert res["verified"] and res["state"] == "COMPLETED"


@pytest.mark.parametrize("phase", ["init", "setup"])
def test_fault_phases_parse(phase: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """REFITCTL_FAULT reaches a task as its TaskEnv.fault (refit_core/environment.py), parsed by Fault.parse."""
    from refit_core.environment import task_env
    from refit_core.execution.faults import Fault

    monkeypatch.setenv("REFITCTL_FAULT", f"hang:rank=2:phase={phase}")
    f = Fault.parse(task_env().fault)
    assert f is not None and f.hits(2, phase) and not f.hits(1, phase) and not f.hits(2, "iteration", 0)
    monkeypatch.setenv("REFITCTL_FAULT", "hang:rank=2:iteration=1")
    f = Fault.parse(task_env().fault)
    assert f is not None and f.hits(2, "iteration", 1) and not f.hits(2, "iteration", 0) and not f.hits(2, phase)
