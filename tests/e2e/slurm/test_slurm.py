"""refitctl against a real SLURM cluster: the local one of scripts/slurm/up.sh (`make slurm-up`).

Partition `debug`, nodes node1 and node2 with 8 (fake) GPUs and 16 CPUs each (a seed config fits one node), slurmdbd accounting so sacct gives
true states. Every job is submitted through `refitctl` (submitit -> sbatch -> srun), runs gloo on the
CPU, and is followed the way a user follows it. Nothing here mocks SLURM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import SMALL, only_run, only_run_or_sweep, refitctl, run_json
from refit_core.errors import RunDirError
from refit_core.records import load_rank_record, rank_path


def _why_no_slurm() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM is not installed here (no sinfo/sbatch): run `make slurm-up` (scripts/slurm/up.sh)"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"SLURM does not answer ({e}): run `make slurm-up`"
    if p.returncode != 0:
        return f"SLURM does not answer (sinfo: {p.stderr.strip()}): run `make slurm-up`"
    if "debug" not in p.stdout:
        return "no partition `debug`: this is not the test cluster of scripts/slurm/up.sh"
    return None


WHY = _why_no_slurm()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
# The test cluster: 8 GPUs per node, partition debug. A long --refit-timeout keeps the ranks' own wait for a
# hung peer from ending a job before SLURM's time limit does.
ON_CLUSTER = ["--cluster", "slurm", "--partition", "debug", "--gpus-per-node", "8", "--refit-method", "gloo",
              "--poll", "1", "--time", "10", "--refit-timeout", "600"]


def sacct(job_id: str, fields: str = "State") -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", fields], capture_output=True, text=True,
                         timeout=30).stdout.strip().splitlines()
    return out[-1] if out else ""


def test_config_4_as_three_tasks(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--gpus", "3", *ON_CLUSTER, *SMALL, runs=tmp_path, check=0)
    assert "Executor: SLURM" in p.stdout and "1 node x 3 tasks, 8 GPUs per node" in p.stdout
    d = only_run(tmp_path)
    info = run_json(d)
    job = info["job"]["job_id"]
    assert job.isdigit() and info["final"]["state"] == "COMPLETED"
    assert sacct(job).startswith("COMPLETED")
    assert json.loads((d / "results.json").read_text())["verified"]
    assert sorted(x.name for x in (d / "logs").iterdir()) == [f"rank-{r:05d}.log" for r in range(3)]
    assert (d / "iterations.csv").read_text().count("\n") == 4


def test_collocated_config(tmp_path: Path) -> None:
    refitctl("submit", "collocated-4", "--gpus", "4", *ON_CLUSTER, *SMALL, runs=tmp_path, check=0)
    d = only_run(tmp_path)
    assert run_json(d)["mode"] == "collocated" and run_json(d)["final"]["state"] == "COMPLETED"


def test_two_node_layout(tmp_path: Path) -> None:
    """config-1's 8 ranks asked on 4-GPU nodes (--gpus-per-node 4): 2 nodes x 4 tasks, ranks 4-7 on the second."""
    p = refitctl("submit", "config-1", *ON_CLUSTER, "--gpus-per-node", "4", *SMALL, runs=tmp_path, check=0)
    assert "2 nodes x 4 tasks" in p.stdout
    d = only_run(tmp_path)
    job = run_json(d)["job"]["job_id"]
    assert sacct(job, "State,NNodes,NodeList").split("|")[:2] == ["COMPLETED", "2"]
    assert "node 0 of 2" in (d / "logs" / "rank-00000.log").read_text()
    assert "node 1 of 2" in (d / "logs" / "rank-00004.log").read_text()
    assert "master node1:" in (d / "logs" / "rank-00007.log").read_text()


def test_sweep_is_one_job_array(tmp_path: Path) -> None:
    names = "config-4,tp-ep-swap-4gpu,ep-refit-minimal"
    root = ROOT
    p = refitctl("sweep", names, "--config-file", str(root / "examples" / "my-configs.toml"), "--gpus", "4",
                 *ON_CLUSTER, *SMALL, runs=tmp_path, timeout=400, check=0)
    assert "one job array" in p.stdout
    sweep = only_run_or_sweep(tmp_path)
    data = json.loads((sweep / "sweep.json").read_text())
    assert len(data["jobs"]) == 1
    array = data["jobs"][0]
    ids = [run_json(sweep / data["runs"][n][0])["job"]["job_id"] for n in data["configs"]]
    assert ids == [f"{array}_{i}" for i in range(3)]
    for i in ids:
        assert sacct(i).startswith("COMPLETED")
    assert (sweep / "comparison.csv").read_text().count(",COMPLETED,") == 3


def test_a_failing_rank_ends_failed_with_its_error(tmp_path: Path) -> None:
    p = refitctl("submit", "config-4", "--gpus", "3", *ON_CLUSTER, "--env", "REFITCTL_FAULT=raise:rank=1:iteration=0",
                 *SMALL, runs=tmp_path, check=1)
    assert "FAILED" in p.stdout and "first failure: rank 1 (source)" in p.stdout
    d = only_run(tmp_path)
    job = run_json(d)["job"]["job_id"]
    assert sacct(job).startswith("FAILED")
    status = refitctl("status", d.name, runs=tmp_path, check=0).stdout
    assert "FAILED" in status and "injected fault: rank 1 raised at iteration 0" in status
    data = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert data["state"] == "FAILED" and "injected fault" in data["errors"]["1"]


def test_cancel_a_running_job(tmp_path: Path) -> None:
    refitctl("submit", "config-4", "--gpus", "3", *ON_CLUSTER, "--detach", "--env", "REFITCTL_FAULT=hang:rank=0:iteration=0",
             *SMALL, runs=tmp_path, check=0)
    d = only_run(tmp_path)
    job = run_json(d)["job"]["job_id"]
    deadline = time.monotonic() + 60
    while sacct(job).split("|")[0] in ("", "PENDING"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert f"scancel {job} sent" in refitctl("cancel", d.name, runs=tmp_path, check=0).stdout
    p = refitctl("status", d.name, "--watch", "--poll", "1", runs=tmp_path, timeout=120, check=0)
    assert "CANCELLED" in p.stdout
    assert sacct(job).startswith("CANCELLED")


def test_a_rendered_script_submitted_by_hand(tmp_path: Path) -> None:
    """`refitctl render` -> `sbatch` by hand -> `refitctl status RUN_DIR --watch` follows it."""
    script = tmp_path / "job.sbatch"
    run_dir = tmp_path / "by-hand"
    refitctl("render", "config-4", "--gpus", "3", "--gpus-per-node", "8", "--partition", "debug", "--time", "10",
             "--refit-method", "gloo", *SMALL, "--run-dir", str(run_dir), "-o", str(script), runs=tmp_path, check=0)
    # RUN_DIR in the submitting environment does not move the run (the script sets it: issue 15, item 14)
    out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "RUN_DIR": str(tmp_path / "not-here")}, timeout=30,
                         check=True)
    job = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while not (run_dir / "run.json").exists() or "@SLURM_JOB_ID@" in (run_dir / "run.json").read_text():
        assert time.monotonic() < deadline, "the script did not write its run directory"
        time.sleep(0.5)
    assert run_json(run_dir)["job"]["job_id"] == job
    p = refitctl("status", str(run_dir), "--watch", "--poll", "1", runs=tmp_path, timeout=180, check=0)
    assert "COMPLETED" in p.stdout and "verified" in p.stdout
    assert json.loads((run_dir / "results.json").read_text())["verified"]
    assert not (tmp_path / "not-here").exists()


# ----------------------------------------------------------------------------- faults and preemption

# --refit-timeout 30: a hung peer is given up on soon, and 3 ranks importing torch at once on a busy 2-core machine
# (other tests' ranks beside them) are not taken for hung (10 s was: "importing torch did not finish")
FAULTY = [a if a != "600" else "30" for a in ON_CLUSTER]


@pytest.mark.parametrize("fault,says", [
    ("kill", "first failure: rank 1 (source): killed by signal 9 (SIGKILL) in iteration 0"),
    ("hang", "first failure: rank 1 (source): hung in iteration 0"),
])
def test_a_killed_or_hung_rank_is_named(fault: str, says: str, tmp_path: Path) -> None:
    """SIGKILL leaves no record (srun's `task 1: Killed` says what happened); a hung rank is found by its peers'
    timeouts. srun --kill-on-bad-exit then ends the others, and the job is FAILED."""
    p = refitctl("submit", "config-4", "--gpus", "3", *FAULTY, "--env", f"REFITCTL_FAULT={fault}:rank=1:iteration=1",
                 *SMALL, runs=tmp_path, timeout=300, check=1)
    assert "FAILED" in p.stdout
    d = only_run(tmp_path)
    assert sacct(run_json(d)["job"]["job_id"]).startswith("FAILED")
    status = refitctl("status", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert says in status, status
    data = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert data["first_failure"]["rank"] == 1 and data["first_failure"]["kind"] == ("killed" if fault == "kill" else "hang")


def _wait(what: str, ok, limit_s: float, every_s: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while True:
        got = ok()
        if got:
            return got
        assert time.monotonic() < deadline, f"waited {limit_s:.0f} s for {what}"
        time.sleep(every_s)


def _restarts(job: str) -> int:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"\bRestarts=(\d+)", out)
    return int(m.group(1)) if m else 0


def _iterations(rank_file: Path) -> int:
    try:
        return len(load_rank_record(rank_file).iterations)
    except (OSError, RunDirError):
        return 0


def test_a_preempted_job_is_requeued_and_finishes(tmp_path: Path) -> None:
    """QOS `high` preempts `normal` by requeue: the refit is stopped, goes back in the queue, starts again from
    scratch and finishes verified; the results say it was requeued once."""
    runs, high_runs = tmp_path / "runs", tmp_path / "high"
    # whole nodes (--exclusive) on both nodes (4 GPUs each): whatever the high-QOS job asks needs them
    refitctl("submit", "config-1", *ON_CLUSTER, "--gpus-per-node", "4", "--exclusive", "--num-benchmark-iterations",
             "300", "--detach", *SMALL, runs=runs, check=0)
    d = only_run(runs)
    job = run_json(d)["job"]["job_id"]
    _wait("the first attempt to refit", lambda: _iterations(rank_path(d, 0)) > 5, 120, 0.5)
    # a high-QOS job needing a node that the running job holds (it holds both): SLURM preempts it
    refitctl("submit", "config-4", "--gpus", "3", *ON_CLUSTER, "--qos", "high", "--detach", *SMALL,
             runs=high_runs, check=0)
    _wait("the preemption", lambda: _restarts(job) >= 1, 60)
    status = refitctl("status", d.name, runs=runs, env={"COLUMNS": "400"}, check=0).stdout
    assert "requeued 1 time(s)" in status, status
    p = refitctl("status", only_run(high_runs).name, "--watch", runs=high_runs, timeout=180, check=0)
    assert "COMPLETED" in p.stdout
    # SLURM holds a requeued job ~120 s (BeginTime) before it may start again: release it now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    p = refitctl("status", d.name, "--watch", "--poll", "1", runs=runs, timeout=300, check=0)
    assert "COMPLETED" in p.stdout and "verified" in p.stdout
    res = json.loads(refitctl("results", d.name, "--json", runs=runs, check=0).stdout)
    assert res["verified"] and res["complete"] and res["restarts"] == 1 and res["timed_iterations"] == 300
    history = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"], capture_output=True,
                             text=True, timeout=30).stdout.split()
    assert history[0] == "PREEMPTED" and history[-1] == "COMPLETED", history
    assert "attempt 2: the job was requeued 1 time(s)" in (d / "logs" / "rank-00000.log").read_text()
    out = refitctl("results", d.name, runs=runs, env={"COLUMNS": "400"}, check=0).stdout
    assert "requeued 1 time(s)" in out


def test_a_job_the_cluster_can_never_hold_is_refused_before_submission(tmp_path: Path) -> None:
    t0 = time.monotonic()
    p = refitctl("submit", "kimi-k2", "--cluster", "slurm", "--gpus-per-node", "8", "--exclusive", "--time", "60",
                 runs=tmp_path, check=2)
    assert p.stderr == ("refitctl: error: this SLURM cluster cannot run kimi-k2: partition 'debug' cannot hold "
                        "16 nodes with 8 GPUs and 8 CPUs each (it has 2 usable): choose a partition that can "
                        "(--partition, --gpus-per-node), or run it here with --cluster local\n")
    assert time.monotonic() - t0 < 60 and not list(tmp_path.iterdir())


def test_auto_runs_locally_what_the_cluster_cannot_hold(tmp_path: Path) -> None:
    # config-4 asked on a 16-GPU node; the test cluster's nodes have 8
    p = refitctl("submit", "config-4", "--gpus", "3", "--gpus-per-node", "16", "--refit-method", "gloo", "--poll", "0.5",
                 *SMALL, runs=tmp_path / "submit", check=0)
    assert ("note: SLURM here cannot run config-4 (partition 'debug' cannot hold 16 GPUs per node (its nodes have "
            "at most 8)): running it as local processes instead (--cluster slurm insists on SLURM)") in p.stdout
    assert "Executor: local processes (the SLURM cluster cannot hold it)" in p.stdout
    assert json.loads((only_run(tmp_path / "submit") / "results.json").read_text())["verified"]
    # a sweep says the same reason, not "sbatch found and SLURM answers" (issue 25)
    p = refitctl("sweep", "config-4", "--gpus", "3", "--gpus-per-node", "16", "--refit-method", "gloo", "--detach",
                 *SMALL, runs=tmp_path / "sweep", check=0)
    assert "Executor: local processes (the SLURM cluster cannot hold them); 1 node x 3 tasks" in p.stdout, p.stdout
    refitctl("cancel", only_run_or_sweep(tmp_path / "sweep").name, runs=tmp_path / "sweep", check=0)


# ----------------------------------------------------------------------------- the README's commands

def test_readme_submit_goes_through_slurm_and_falls_back_to_gloo(tmp_path: Path) -> None:
    """`refitctl submit config-1` as the README says it (no --cluster, no --refit-method): one 8-GPU node of
    the test cluster; its nodes have no CUDA, so the config's own nvshmem falls back to gloo on the nodes, as
    it does locally (issue 25: rank 5 failed "nvshmem needs CUDA GPUs")."""
    p = refitctl("submit", "config-1", "--poll", "1", *SMALL, runs=tmp_path, env={"COLUMNS": "400"}, timeout=300,
                 check=0)
    assert "Executor: SLURM (sbatch found and SLURM answers); 1 node x 8 tasks, 8 GPUs per node" in p.stdout, p.stdout
    assert "method gloo (for nvshmem)" in p.stdout
    d = only_run(tmp_path)
    assert json.loads((d / "results.json").read_text())["method"] == "gloo"
    assert "no CUDA GPU on this node: running config-1 with gloo on the CPU instead of nvshmem" in (
        d / "logs" / "rank-00005.log").read_text()
    # asked for by flag, nvshmem is not replaced: the ranks fail and say why
    p = refitctl("submit", "config-4", "--gpus", "3", "--refit-method", "nvshmem", "--refit-timeout", "30", "--poll",
                 "1", *SMALL, runs=tmp_path / "asked", timeout=300, check=1)
    assert "needs CUDA GPUs" in refitctl("status", only_run(tmp_path / "asked").name, runs=tmp_path / "asked",
                                         env={"COLUMNS": "400"}, check=0).stdout


def test_readme_sweep_8gpu_is_one_job_array(tmp_path: Path) -> None:
    """`refitctl sweep 8gpu`: the ten seed configs, each on one 8-GPU node, as ONE job array (submitted and
    cancelled here: running all ten takes minutes on 2 cores)."""
    p = refitctl("sweep", "8gpu", "--detach", "--time", "10", *SMALL, runs=tmp_path, env={"COLUMNS": "400"},
                 timeout=300, check=0)
    assert ("Executor: SLURM (sbatch found and SLURM answers); 1 node x 8 tasks, 8 GPUs per node, time limit 10:00; "
            "one job array") in p.stdout, p.stdout
    sweep = only_run_or_sweep(tmp_path)
    data = json.loads((sweep / "sweep.json").read_text())
    assert len(data["configs"]) == 10 and len(data["jobs"]) == 1
    ids = [run_json(sweep / data["runs"][n][0])["job"]["job_id"] for n in data["configs"]]
    assert ids == [f"{data['jobs'][0]}_{i}" for i in range(10)]
    refitctl("cancel", sweep.name, runs=tmp_path, check=0)
    _wait("the array to leave the queue", lambda: not subprocess.run(
        ["squeue", "-h", "-j", data["jobs"][0]], capture_output=True, text=True, timeout=30).stdout.strip(), 120)
    # pending tasks cancelled before SLURM split them off have no accounting record: refitctl remembered them
    time.sleep(35)  # MinJobAge=30: slurmctld forgets the ended tasks
    status = refitctl("status", sweep.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert status.count("CANCELLED") >= 10 and "UNKNOWN" not in status, status


@pytest.mark.parametrize("name", ["kimi-k2-small", "config-1"])
def test_a_relayed_plan_on_two_nodes(name: str, tmp_path: Path) -> None:
    """Issue 26: destinations on node 2 share bytes that cross from node 1 (kimi-k2-small: every dense weight,
    destination TP=1; config-1: the experts, expert TP 1): each enters the node once and a relay forwards it
    over the node (the second hop, phase "relay"); every byte verified."""
    from jobs.refit_job import load_plan

    # two nodes x 4 tasks (the nodes hold 8 GPUs: --gpus-per-node 4 spreads the 8 ranks over both)
    refitctl("submit", name, *ON_CLUSTER, "--gpus-per-node", "4", *SMALL, runs=tmp_path, check=0)
    d = only_run(tmp_path)
    assert run_json(d)["final"]["state"] == "COMPLETED"
    assert json.loads((d / "results.json").read_text())["verified"]
    plan = load_plan(d)
    relays = {t.src for t in plan.transfers if t.hop}
    assert plan.relayed_bytes > 0 and relays and all(r >= 4 for r in relays)
    for r in relays:
        rec = load_rank_record(rank_path(d, r))
        assert rec.verified and all("relay" in it.phases_ms for it in rec.iterations), r
