"""Faults a real SLURM cluster has, on the local test cluster (issue 25): a node lost mid-run, slurmctld
restarted mid-run, a job requeued by hand. Each run goes to its end; then `status`, `results` and
`sweep --resume` are checked: the state tells the truth, nothing verified is lost, no process of the run
is left, and the cause is named in words.

These tests stop and restart the cluster's daemons (root, as `make slurm-up` runs it); each puts the
cluster back as it found it (`scripts/slurm/up.sh`, idempotent) whatever happens. Runs are one-config
sweeps, so `sweep --resume` is what a user would type next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import ROOT
from helpers import SMALL, only_run_or_sweep, refitctl, run_json
from test_slurm import ON_CLUSTER, WHY, _iterations, _restarts, _wait, sacct
from refit_core.records import rank_path

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
CLUSTER_DIR = Path(os.environ.get("REFITCTL_SLURM_DIR", "/var/tmp/refitctl-slurm"))  # scripts/slurm/up.sh's $DIR
WIDE = {"COLUMNS": "400"}


@pytest.fixture
def cluster() -> Iterator[None]:
    """The test may stop daemons: afterwards up.sh brings back whatever is missing and resumes down nodes."""
    if os.geteuid() != 0:
        pytest.skip("stopping SLURM daemons needs root (the test cluster's daemons run as root)")
    # a node an earlier test stopped may still be registering again: start with both usable (bounded)
    _wait("both nodes usable", lambda: all(_node_state(n) in ("idle", "mix", "alloc") for n in ("node1", "node2")),
          120, 1.0)
    try:
        yield
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "up.sh")], capture_output=True, timeout=300)


def _daemon_pid(name: str) -> int:
    return int((CLUSTER_DIR / "run" / f"{name}.pid").read_text().strip())


def _stop(name: str) -> None:
    """Stop one daemon (slurmctld, slurmd-node2) by its pid file, and wait until it is gone."""
    pid = _daemon_pid(name)
    os.kill(pid, signal.SIGTERM)
    _wait(f"{name} to stop", lambda: not Path(f"/proc/{pid}").exists() or
          Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z", 60, 0.2)


def _node_state(node: str) -> str:
    out = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%t"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def _processes_of(folder: Path) -> list[str]:
    """Processes whose command line names `folder` (the ranks: `python -m submitit.core._submit FOLDER`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmd:
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def _sweep(runs: Path, *args: str) -> tuple[Path, Path, str]:
    """A one-config sweep of config-4 on 3 ranks, detached: (sweep dir, its run dir, job id)."""
    refitctl("sweep", "config-4", "--gpus", "3", *ON_CLUSTER, "--detach", *args, *SMALL, runs=runs, check=0)
    sweep = only_run_or_sweep(runs)
    run = next(d for d in sweep.iterdir() if (d / "run.json").is_file())
    return sweep, run, run_json(run)["job"]["job_id"]


def _release(job: str) -> None:
    """SLURM holds a requeued job ~120 s (BeginTime) before it may start again: release it now. The hold is
    set when the requeue is complete (the job PENDING), so an earlier release would be overwritten."""
    def released() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T|%r"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        if out == "PENDING|BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)
        return out.startswith(("RUNNING", "CONFIGURING", "COMPLETED"))  # not COMPLETING: the first attempt ending

    _wait(f"job {job} released from its requeue hold", released, 150)


def _resumed_and_verified(runs: Path, sweep: Path, *args: str) -> None:
    """`sweep --resume` reruns what did not verify and follows it to a verified end; a second one finds
    nothing to rerun (nothing verified is lost)."""
    p = refitctl("sweep", "--resume", str(sweep), "--poll", "1", *args, runs=runs, timeout=400, check=0)
    assert "COMPLETED" in p.stdout, p.stdout
    p = refitctl("sweep", "--resume", str(sweep), runs=runs, timeout=120, check=0)
    assert "verified already: nothing to rerun" in p.stdout, p.stdout


def test_a_node_lost_mid_run_ends_node_fail(cluster: None, tmp_path: Path) -> None:
    """node2's slurmd stops while config-1 runs on both nodes (4 ranks each): slurmctld marks node2 down
    after SlurmdTimeout and ends the job NODE_FAIL (--no-requeue: left in the queue, it would wait for
    the node). refitctl shows NODE_FAIL and says what it means; once node2 is back, `sweep --resume` runs
    the config again, verified. (Rank 0 hangs at iteration 1 so the job is mid-run when the node goes;
    the rerun leaves that fault out.)"""
    runs = tmp_path / "runs"
    refitctl("sweep", "config-1", *ON_CLUSTER, "--gpus-per-node", "4", "--sbatch-arg=--no-requeue", "--detach",
             "--env", "REFITCTL_FAULT=hang:rank=0:iteration=1", *SMALL, runs=runs, check=0)
    sweep = only_run_or_sweep(runs)
    run = next(d for d in sweep.iterdir() if (d / "run.json").is_file())
    job = run_json(run)["job"]["job_id"]
    _wait("ranks on both nodes to refit", lambda: _iterations(rank_path(run, 4)) >= 1, 180, 0.5)
    _stop("slurmd-node2")
    _wait("SLURM to end the job NODE_FAIL", lambda: sacct(job).startswith("NODE_FAIL"), 120)
    # while node2 is away the job may still be COMPLETING (SLURM stopping node1's part): its end is said
    status = refitctl("status", run.name, runs=sweep, env=WIDE, check=0).stdout
    assert "NODE_FAIL" in status and "a node of the job failed" in status, status
    # node2 back: the ranks SLURM could not reach there are ended by its slurmd; nothing of the run is left
    subprocess.run(["slurmd", "-N", "node2"], check=True, timeout=60)
    subprocess.run(["scontrol", "update", "NodeName=node2", "State=RESUME"], capture_output=True, timeout=30)
    _wait("node2 usable again", lambda: _node_state("node2") in ("idle", "mix", "alloc"), 120)
    _wait("no process of the run left", lambda: not _processes_of(sweep), 120)
    _wait("the job to leave COMPLETING", lambda: "COMPLETING" not in subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30).stdout, 120)
    status = refitctl("status", run.name, runs=sweep, env=WIDE, check=0).stdout
    assert "NODE_FAIL (a node of the job failed (its slurmd stopped answering slurmctld)" in status, status
    data = json.loads(refitctl("results", run.name, "--json", runs=sweep, check=1).stdout)
    assert data["state"] == "NODE_FAIL" and not data["verified"]
    listing = refitctl("runs", runs=runs, env=WIDE, check=0).stdout
    assert "NODE_FAIL" in listing, listing
    _resumed_and_verified(runs, sweep, "--env", "REFITCTL_FAULT=")
    first = refitctl("status", run.name, runs=sweep, env=WIDE, check=0).stdout
    assert "NODE_FAIL" in first  # the first attempt keeps its true end
    assert not _processes_of(sweep)


def test_slurmctld_restarted_mid_run(cluster: None, tmp_path: Path) -> None:
    """slurmctld stops mid-run and comes back 15 s later (its state saved in StateSaveLocation): the job runs
    on meanwhile; each look at it while the controller is away answers within a few seconds (NO_ANSWER
    or what accounting says); a `status --watch` started before follows it again and ends COMPLETED."""
    runs = tmp_path / "runs"
    sweep, run, job = _sweep(runs, "--num-benchmark-iterations", "1000")
    _wait("the ranks to refit", lambda: _iterations(rank_path(run, 0)) > 5, 180, 0.5)
    watch = subprocess.Popen([sys.executable, "-m", "orchestrator", "status", run.name, "--watch", "--poll", "1",
                              "--runs-dir", str(sweep)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=ROOT, env={**os.environ, **WIDE})
    try:
        _stop("slurmctld")
        for args, root in ((("status", run.name), sweep), (("runs",), runs)):
            t0 = time.monotonic()
            out = refitctl(*args, runs=root, env=WIDE, timeout=60, check=0).stdout
            assert time.monotonic() - t0 < 10, f"{args} took {time.monotonic() - t0:.1f} s with slurmctld down"
            assert "NO_ANSWER" in out or "RUNNING" in out, out
        time.sleep(10)
        subprocess.run(["slurmctld"], check=True, timeout=60)
        out, _ = watch.communicate(timeout=400)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert "COMPLETED" in out and "verified" in out, out
    assert sacct(job).startswith("COMPLETED")
    res = json.loads(refitctl("results", run.name, "--json", runs=sweep, check=0).stdout)
    assert res["verified"] and res["timed_iterations"] == 1000 and res["restarts"] == 0
    p = refitctl("sweep", "--resume", str(sweep), runs=runs, timeout=120, check=0)
    assert "verified already: nothing to rerun" in p.stdout, p.stdout
    assert not _processes_of(sweep)


def test_a_job_requeued_by_hand_reruns_from_scratch(cluster: None, tmp_path: Path) -> None:
    """`scontrol requeue` mid-run: SLURM stops the job and puts it back in the queue (REQUEUED in its
    history); refitctl says it was requeued; the second attempt starts the refit again from scratch, as
    `sweep --resume` would, and ends verified with `restarts` 1."""
    runs = tmp_path / "runs"
    sweep, run, job = _sweep(runs, "--num-benchmark-iterations", "300")
    _wait("the first attempt to refit", lambda: _iterations(rank_path(run, 0)) > 5, 180, 0.5)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    _wait("the requeue", lambda: _restarts(job) >= 1, 60)
    status = refitctl("status", run.name, runs=sweep, env=WIDE, check=0).stdout
    assert "requeued 1 time(s)" in status and "starts the refit from scratch" in status, status
    _release(job)
    p = refitctl("status", run.name, "--watch", "--poll", "1", runs=sweep, timeout=300, check=0)
    assert "COMPLETED" in p.stdout and "verified" in p.stdout, p.stdout
    res = json.loads(refitctl("results", run.name, "--json", runs=sweep, check=0).stdout)
    assert res["verified"] and res["restarts"] == 1 and res["timed_iterations"] == 300
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], capture_output=True,
                             text=True, timeout=30).stdout.split()
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    assert "requeued 1 time(s)" in refitctl("results", run.name, runs=sweep, env=WIDE, check=0).stdout
    p = refitctl("sweep", "--resume", str(sweep), runs=runs, timeout=120, check=0)
    assert "verified already: nothing to rerun" in p.stdout, p.stdout
    assert not _processes_of(sweep)


def test_a_time_limit_ends_timeout_and_resume_reruns_it(tmp_path: Path) -> None:
    """--time 1 and a rank that hangs: SLURM sends SIGTERM at the limit, SIGKILL after KillWait; the run is
    TIMEOUT, said in words; `sweep --resume` (without the hang) reruns it, verified."""
    runs = tmp_path / "runs"
    args = [a if a != "10" else "1" for a in ON_CLUSTER]  # --time 1
    refitctl("sweep", "config-4", "--gpus", "3", *args, "--env", "REFITCTL_FAULT=hang:rank=0:iteration=0", *SMALL,
             runs=runs, timeout=300, check=1)
    sweep = only_run_or_sweep(runs)
    run = next(d for d in sweep.iterdir() if (d / "run.json").is_file())
    assert sacct(run_json(run)["job"]["job_id"]).startswith("TIMEOUT") and run_json(run)["final"]["state"] == "TIMEOUT"
    status = refitctl("status", run.name, runs=sweep, env=WIDE, check=0).stdout
    assert "TIMEOUT" in status and "the time limit was reached" in status, status
    assert json.loads(refitctl("results", run.name, "--json", runs=sweep, check=1).stdout)["state"] == "TIMEOUT"
    assert not _processes_of(sweep)
    _resumed_and_verified(runs, sweep, "--env", "REFITCTL_FAULT=", "--time", "10")
