"""Detached SLURM runs are asked about in one bounded look, and a job's end is remembered (issue 25, item 4).

A fake SLURM on PATH (squeue, sacct) stands for a controller that answers, one that is down, and one
that never answers; no cluster is needed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from orchestrator.state import slurmquery
from orchestrator.state.jobstate import NO_ANSWER, job_state
from orchestrator.state.runfiles import JobRecord
from orchestrator.state.slurmcache import CACHE_FILE

PY = sys.executable


def fake_slurm(tmp_path: Path, squeue: str, sacct: str) -> dict[str, str]:
    """PATH with a fake squeue and sacct (bash bodies; each call is logged to $D/calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in (("squeue", squeue), ("sacct", sacct)):
        (bin_dir / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> "$D/calls"\n{body}\n')
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "D": str(tmp_path)}


def detached_run(root: Path, name: str, job_id: str, submitted: float = 1_700_000_000.0) -> Path:
    """A run directory as `submit --detach` on SLURM leaves it while the job runs: a job, no final state."""
    d = root / name
    (d / "ranks").mkdir(parents=True)
    info = {"version": 1, "name": name, "config": "config-4", "run_dir": str(d), "created": "2026-12-05T07:00:00",
            "command": "refitctl submit config-4 --detach", "spec": {"method": "gloo"}, "world_size": 3,
            "active_ranks": 3, "delivered_bytes": 4_000_000, "iterations": 2, "warmup": 1, "mode": "non-collocated",
            "source": {"tp": 2, "ep": 1, "pp": 1}, "destination": {"tp": 1, "ep": 1, "pp": 1},
            "job": {"cluster": "slurm", "job_id": job_id, "folder": str(d / "submitit"), "submitted": submitted},
            "final": None}
    (d / "run.json").write_text(json.dumps(info))
    return d


def test_squeue_and_sacct_lines_are_read() -> None:
    q = slurmquery.parse_squeue("12_0|RUNNING|None|0\n13|PENDING|BeginTime|2\n14|PENDING|Priority\n")
    assert q == {"12_0": slurmquery.QueueEntry("RUNNING", "None", 0),
                 "13": slurmquery.QueueEntry("PENDING", "BeginTime", 2),
                 "14": slurmquery.QueueEntry("PENDING", "Priority", 0)}
    a = slurmquery.parse_sacct("7|COMPLETED|0:0|00:00:09\n8|CANCELLED by 0|0:15|00:01:00\n7|NODE_FAIL|0:0|00:00:31\n")
    assert a == {"7": slurmquery.AcctEntry("NODE_FAIL", "0:0", "00:00:31"),  # a reused id: the newest record
                 "8": slurmquery.AcctEntry("CANCELLED", "0:15", "00:01:00")}


def test_many_runs_are_one_query_each_and_an_end_is_remembered(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    env = fake_slurm(tmp_path, 'echo "101|RUNNING|None|0"; echo "102|PENDING|BeginTime|1"',
                     'echo "103|NODE_FAIL|0:0|00:00:31"')
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    runs = [detached_run(tmp_path / "runs", f"r{i}", str(101 + i)) for i in range(3)]
    from orchestrator.state.tracking import snapshots

    states = [s.state for s in snapshots(runs)]
    assert [s.state for s in states] == ["RUNNING", "PENDING", "NODE_FAIL"]
    assert states[1].detail.startswith("requeued 1 time(s)") and "BeginTime" in states[1].detail
    assert "a node of the job failed" in states[2].detail and "exit code 0:0, elapsed 00:00:31" in states[2].detail
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["squeue", "sacct"] or sorted(c.split()[0] for c in calls) == [
        "sacct", "squeue"]
    assert all("101,102,103" in c for c in calls), calls
    # the end read from accounting is kept: the next look does not ask about that job again
    assert json.loads((runs[2] / CACHE_FILE).read_text())["state"] == "NODE_FAIL"
    (tmp_path / "calls").unlink()
    again = snapshots(runs)
    assert again[2].state.state == "NODE_FAIL" and again[2].state.source == "sacct (remembered)"
    assert all("101,102 " in c for c in (tmp_path / "calls").read_text().splitlines())


@pytest.mark.parametrize("squeue,says", [
    ("sleep 30", "squeue did not answer within 1 s"),
    ('echo "squeue: error: Unable to contact slurm controller (connect failure)" >&2; exit 1',
     "Unable to contact slurm controller"),
])
def test_a_silent_controller_is_no_answer_within_the_bound(squeue: str, says: str, tmp_path: Path,
                                                           monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for k, v in fake_slurm(tmp_path, squeue, "sleep 30").items():
        monkeypatch.setenv(k, v)
    d = detached_run(tmp_path, "r", "55")
    t0 = time.monotonic()
    st = job_state(d, JobRecord("slurm", "55", "", 1_700_000_000.0, None))
    assert time.monotonic() - t0 < slurmquery.QUERY_BUDGET_S + 1.0
    assert st.state == NO_ANSWER and not st.final and says in st.detail, st
    assert not (d / CACHE_FILE).exists()


def busy() -> float:
    """How much slower than its CPU time a CPU-bound process runs here now (wall / CPU, at least 1): the CI
    machine has 2 cores shared with the other tests' processes."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run([PY, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
                   check=True, timeout=60)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return max(1.0, (time.monotonic() - t0) / max(cpu, 1e-3))


def test_status_and_runs_over_500_runs_with_an_unreachable_controller(tmp_path: Path) -> None:
    """The goal of issue 25 item 4: 500 runs, 200 of them detached on SLURM (100 whose end is remembered),
    squeue and sacct never answering: `runs` and `status` each answer in < 2 s (one bounded look)."""
    env = {**os.environ, **fake_slurm(tmp_path, "sleep 60", "sleep 60"), "COLUMNS": "200"}
    root = tmp_path / "runs"
    template = detached_run(tmp_path / "t", "t", "1")
    base = json.loads((template / "run.json").read_text())
    for i in range(500):
        d = root / f"run-{i:03d}"
        (d / "ranks").mkdir(parents=True)
        info = dict(base, name=d.name, run_dir=str(d), created=f"2026-12-05T07:{i // 60:02d}:{i % 60:02d}")
        if i < 300:  # finished and finalized by the refitctl that followed it
            info["final"] = {"state": "FAILED", "detail": "rank 1 failed", "source": "test"}
        info["job"] = dict(base["job"], job_id=str(1000 + i))
        (d / "run.json").write_text(json.dumps(info))
        if 300 <= i < 400:  # over, its end remembered from an earlier look
            (d / CACHE_FILE).write_text(json.dumps({"job_id": str(1000 + i), "submitted": 1_700_000_000.0,
                                                    "state": "TIMEOUT", "detail": "time limit", "source": "sacct"}))

    def timed(*args: str) -> tuple[float, str]:
        """Wall time of the whole command, Python's start included: the best of up to 3 tries, each against
        2 s stretched by how busy the machine is right then (`busy()`: 1 on an idle machine)."""
        best = float("inf")
        for _ in range(3):
            limit = 2.0 * busy()
            t0 = time.monotonic()
            p = subprocess.run([PY, "-m", "orchestrator", *args, "--runs-dir", str(root)], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            best = min(best, (time.monotonic() - t0) * 2.0 / limit)
            assert p.returncode == 0, p.stderr
            if best < 2.0:
                break
        return best, p.stdout

    took, out = timed("runs", "--last", "500")
    assert took < 2.0, f"runs over 500 runs took {took:.2f} s (scaled to an idle machine)"
    assert out.count(NO_ANSWER) == 100 and out.count("TIMEOUT") == 100 and out.count("FAILED") == 300, out
    took, out = timed("status", "run-450")
    assert took < 2.0 and NO_ANSWER in out and "squeue did not answer within 1 s" in out, (took, out)
    calls = (tmp_path / "calls").read_text().splitlines()
    # one squeue and one sacct per command, for every detached run at once (`runs`) or the one asked (`status`)
    asked = ("squeue -h -j 1400,1401,", "sacct -X -n -P -j 1400,1401,", "squeue -h -j 1450 ", "sacct -X -n -P -j 1450 ")
    assert all(c.startswith(asked) for c in calls) and len(calls) <= 12, calls


@pytest.mark.parametrize("restarts,acct,says,not_says", [
    (0, "NODE_FAIL", "ended NODE_FAIL: a node of the job failed", "requeued"),
    (1, "PREEMPTED", "requeued 1 time(s)", "not requeued"),
])
def test_a_job_still_completing_says_how_it_ended(restarts: int, acct: str, says: str, not_says: str,
                                                  tmp_path: Path) -> None:
    """squeue still lists the job COMPLETING (SLURM stopping its processes) while sacct has its end."""
    from orchestrator.state.jobstate import slurm_answer

    view = slurmquery.SlurmView({"9": slurmquery.QueueEntry("COMPLETING", "NodeDown", restarts)},
                                {"9": slurmquery.AcctEntry(acct, "0:0", "00:00:30")},
                                slurmquery.Reply(True), slurmquery.Reply(True))
    st = slurm_answer(tmp_path, JobRecord("slurm", "9", "", 1_700_000_000.0, None), view)
    assert st.state == "COMPLETING" and not st.final
    assert says in st.detail and not_says not in st.detail and "still stopping its processes" in st.detail, st
