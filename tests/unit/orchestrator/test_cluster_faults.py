"""Faults a cluster really has, without SLURM (issue 25, items 1, 3, 5, 6, 8, 10, 11, 12, 13, 14) and what a
newcomer meets (--env help, `plan` of a large world, misspelled flags).

Run directories are made by hand with the writers a job uses (test_run_state.craft_run); the local
controller's decisions are tested on its own object with stand-in tasks; a full disk is a real tmpfs where
this process may mount one (root), else an ENOSPC injected at the write the code does (both say which).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from helpers import SMALL
from jobs.supervisor import RankSupervisor
from orchestrator import controller
from orchestrator.state import jobstate, rundir
from orchestrator.state.runfiles import read_job_state
from orchestrator.submission import executor
from refit_core.records import IterationRecord, RankRecord, RankRecordWriter, rank_path
from test_run_state import cli, craft_run, one_line, write_ranks

PY = sys.executable
LOCAL_JOB = {"cluster": "local", "job_id": "1", "folder": "", "submitted": 0, "controller_pid": None}


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ----------------------------------------------------------------------------- item 1: the job id cannot be saved

def test_a_job_whose_id_cannot_be_saved_is_stopped_and_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller starts for real; saving its job id in run.json fails (ENOSPC injected at update_run,
    the write that failed in the issue): nothing may run that refitctl says was never submitted."""
    from orchestrator.actions import launch

    refs: list[executor.JobRef] = []
    real_submit = executor.submit_local
    monkeypatch.setattr(executor, "submit_local", lambda *a: refs.extend(real_submit(*a)) or refs)
    monkeypatch.setattr(launch, "update_run", _enospc)
    code, _, err = cli("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo",
                       "--detach", "--runs-dir", str(tmp_path), *SMALL)
    line = one_line(code, err)
    assert "cannot record its job (No space left on device)" in line, line
    assert f"local job {refs[0].job_id} was stopped, nothing runs" in line, line
    pid = refs[0].controller_pid
    assert pid is not None and not Path(f"/proc/{pid}").exists()  # the controller is gone (and reaped)
    assert [d for d in tmp_path.iterdir() if d.is_dir()] == []  # no run directory `runs` could not explain


# ----------------------------------------------------------------------------- item 3: disk full mid-run

def _full_disk_state(d: Path, monkeypatch: pytest.MonkeyPatch, real_fs: bool) -> None:
    """The controller's RUNNING state, then a full disk, then its final state."""
    controller.reserve_state(d / "job-state.json", {"state": "RUNNING", "started": 1.0, "job_id": "7",
                                                  "controller_pid": 1}, 3)
    if real_fs:
        with contextlib.suppress(OSError), open(d / "filler", "wb") as fh:
            while True:
                fh.write(b"x" * 65536)
                fh.flush()
    else:
        monkeypatch.setattr(controller, "write_json_atomic", _enospc)
    controller.write_state(d / "job-state.json", {"state": "FAILED", "detail": "rank 2 failed first, exit code 1",
                                                "exit_codes": [0, 0, 1], "failed_ranks": [2], "started": 1.0,
                                                "ended": 2.0, "job_id": "7"})


@pytest.mark.parametrize("real_fs", [True, False], ids=["tmpfs", "injected-ENOSPC"])
def test_the_final_state_is_kept_on_a_full_disk(real_fs: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path
    if real_fs:
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs (the injected-ENOSPC case runs everywhere)")
        root = tmp_path / "mnt"
        root.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)]).returncode:
            pytest.skip("mount failed")
    try:
        d = craft_run(root, "full", final=None, job=LOCAL_JOB, results=False)
        _full_disk_state(d, monkeypatch, real_fs)
        st = read_job_state(d)
        assert st is not None and (st.state, st.failed_ranks, st.exit_codes) == ("FAILED", [2], [0, 0, 1])
        code, out, err = cli("status", "full", "--runs-dir", str(root))
        assert code == 0 and "FAILED (rank 2 failed first, exit code 1)" in out, out + err
    finally:
        if real_fs:
            subprocess.run(["umount", str(root)], capture_output=True)


# ----------------------------------------------------------------------------- item 5: finished runs from their summary

def test_a_finished_run_is_read_from_its_summary(tmp_path: Path) -> None:
    """Finalized, then its records removed: status and runs still show it whole (they read summary.json);
    `results` reads the records and says they are gone. 2,000 iterations: the table shows 16 of them."""
    d = craft_run(tmp_path, "long", final=None, job=LOCAL_JOB, results=False)
    for f in (d / "ranks").iterdir():
        f.unlink()
    write_ranks(d, iterations=2001)
    info = json.loads((d / "run.json").read_text())
    (d / "run.json").write_text(json.dumps({**info, "iterations": 2000}))
    rundir.finalize(d, rundir.read_run_info(d), {"state": "COMPLETED", "detail": "", "source": "test"})
    summary = json.loads((d / "summary.json").read_text())
    assert summary["results"]["iterations_recorded"] == 2001 and len(summary["results"]["iterations"]) == 1000
    assert (d / "summary.json").stat().st_size < 300_000
    code, before, _ = cli("status", "long", "--runs-dir", str(tmp_path))
    for f in (d / "ranks").iterdir():
        f.unlink()
    (d / "results.json").unlink()
    code, out, err = cli("status", "long", "--runs-dir", str(tmp_path))
    assert code == 0 and out == before, err
    assert "... 1985 more" in out and "COMPLETED" in out and "verified" in out and "incomplete" not in out
    code, out, _ = cli("runs", "--runs-dir", str(tmp_path))
    assert code == 0 and "COMPLETED" in out and "yes" in out


# ----------------------------------------------------------------------------- item 6: links planted in a run directory

def test_no_write_follows_a_link_planted_in_a_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.configs import resolve

    outside = tmp_path / "outside"
    outside.mkdir()
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        d = craft_run(runs, name)
        (d / "config.json").write_text(json.dumps(resolve("config-4").to_json()))
    os.symlink(outside, runs / "a" / "report")
    (runs / "b" / "report").mkdir()
    os.symlink(outside / "r.html", runs / "b" / "report" / "report.html")
    for name, says in (("a", "a/report is a symbolic link"), ("b", "report/report.html is a symbolic link")):
        code, _, err = cli("report", name, "--runs-dir", str(runs))
        assert says in one_line(code, err)
    c = craft_run(runs, "c", final=None, job={**LOCAL_JOB, "controller_pid": os.getpid()})
    os.symlink(outside / "cancelled", c / "cancel-requested")  # dangling: write_text would create its target
    monkeypatch.setattr(jobstate, "_controller_alive", lambda pid: True)
    code, _, err = cli("cancel", "c", "--runs-dir", str(runs))
    assert "cancel-requested is a symbolic link" in one_line(code, err)
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------- items 8, 14: the local controller decides

class _Task:
    """A stand-in for a rank's process: exits with `code` after `polls` polls."""

    def __init__(self, code: int, polls: int = 0) -> None:
        self.code, self.polls = code, polls

    def poll(self) -> int | None:
        self.polls -= 1
        return self.code if self.polls < 0 else None


def _outcome(d: Path, tasks: list[_Task]) -> tuple[str, str]:
    """What the local controller's supervisor decides for these ranks, with its cancel test for run `d`."""
    sup = RankSupervisor(tasks, 60, poll_s=0.01, cancelled=lambda: (d / "cancel-requested").exists()
                         and not controller._refit_done(d))  # as orchestrator/controller.py asks it
    out = sup.wait()
    return out.state, controller.stopped_detail(out.state, out.detail, None)


def test_a_cancel_after_the_last_rank_finished_keeps_the_run_completed(tmp_path: Path) -> None:
    d = craft_run(tmp_path, "done", final=None, job=LOCAL_JOB)  # rank 0's verified results.json is there
    (d / "cancel-requested").write_text("1\n")
    assert _outcome(d, [_Task(0), _Task(0), _Task(0)]) == ("COMPLETED", "")
    # the ranks still exiting after the refit verified: waited for, not stopped
    assert _outcome(d, [_Task(0, polls=3), _Task(0), _Task(0)]) == ("COMPLETED", "")
    (d / "results.json").unlink()  # not over yet: the cancel stops it
    assert _outcome(d, [_Task(0, polls=10**6)]) == ("CANCELLED", "cancelled by the user (refitctl cancel)")


def test_sigterm_to_the_controller_is_not_called_a_user_cancel() -> None:
    detail = controller.stopped_detail("CANCELLED", "cancelled by the user", "SIGTERM")
    assert detail.startswith("the local controller received SIGTERM (not `refitctl cancel`")
    assert controller.stopped_detail("FAILED", "rank 1 failed first", "SIGTERM") == "rank 1 failed first"


# ----------------------------------------------------------------------------- item 10: --runs-dir first

def test_a_run_name_is_looked_up_under_the_runs_directory_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    craft_run(tmp_path / "runs", "same", final="COMPLETED")
    craft_run(tmp_path / "cwd", "same", final="FAILED")
    monkeypatch.chdir(tmp_path / "cwd")
    code, out, _ = cli("status", "same", "--runs-dir", str(tmp_path / "runs"))
    assert code == 0 and "COMPLETED" in out and "FAILED" not in out


# ----------------------------------------------------------------------------- item 11: a FIFO in a run directory

def test_a_fifo_in_a_run_directory_never_hangs_a_reader(tmp_path: Path) -> None:
    for name in ("job-state.json", "ranks/rank-00001.jsonl", "plan.json", "logs/rank-00000.log"):
        d = craft_run(tmp_path, "fifo-" + name.split("/")[-1].split(".")[0], final=None, job=LOCAL_JOB)
        (d / name).unlink(missing_ok=True)
        os.mkfifo(d / name)
    craft_run(tmp_path, "good")
    env = {**os.environ, "COLUMNS": "250"}
    run = [PY, "-m", "orchestrator", "runs", "--runs-dir", str(tmp_path)]
    p = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    rows = {ln.split("│")[1].strip(): ln for ln in p.stdout.splitlines() if ln.count("│") > 3}
    assert p.returncode == 0 and "BROKEN" in rows["fifo-job-state"] and "not a regular file" in rows["fifo-job-state"]
    assert "COMPLETED" in rows["good"]
    for name, code in (("fifo-job-state", 2), ("fifo-rank-00001", 0), ("fifo-plan", 0), ("fifo-rank-00000", 0)):
        p = subprocess.run([PY, "-m", "orchestrator", "status", name, "--runs-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
        assert p.returncode == code and "Traceback" not in p.stderr, (name, p.stderr)
        if code:
            assert "job-state.json is not a regular file (a FIFO, socket or device)" in one_line(code, p.stderr)
        if name == "fifo-rank-00001":
            assert "rank-00001.jsonl: unreadable (not a regular file" in p.stdout


# ----------------------------------------------------------------------------- item 12: ASCII-only output

@pytest.mark.parametrize("env", [{"LANG": "C", "PYTHONIOENCODING": "ascii"},
                                 {"LC_ALL": "C", "PYTHONUTF8": "0"}], ids=["ascii-stdout", "c-locale"])
def test_ascii_only_output_and_a_non_ascii_runs_directory(env: dict[str, str], tmp_path: Path) -> None:
    runs = tmp_path / "rüns"
    craft_run(runs, "r1")
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COLUMNS": "200", **env}
    for cmd in (["status", "r1"], ["results", "r1"], ["runs"], ["results", "r1", "--json"]):
        p = subprocess.run([PY, "-m", "orchestrator", *cmd, "--runs-dir", str(runs)], capture_output=True,
                           cwd=ROOT, env=base, timeout=60)
        assert p.returncode == 0 and p.stderr == b"", (cmd, p.stderr.decode(errors="replace"))
        if env.get("PYTHONIOENCODING") == "ascii":
            p.stdout.decode("ascii")  # nothing but ASCII reached the terminal


# ----------------------------------------------------------------------------- item 13: rank-iterations.csv

def test_rank_iterations_csv_drops_what_iterations_csv_drops(tmp_path: Path) -> None:
    """Rank 2 failed its iteration 1 (it recorded no time for it); ranks 0 and 1 did record theirs."""
    d = craft_run(tmp_path, "failed", final=None, results=False)
    for r in range(3):
        w = RankRecordWriter(rank_path(d, r))
        rec = RankRecord(r, "source" if r < 2 else "destination")
        for k in range(3 if r < 2 else 2):
            rec.iterations.append(IterationRecord(k - 1, k == 0, 2.0, bytes_in=7, launches=1))
        rec.error = "VerificationError: wrong" if r == 2 else None
        w.save(rec)
        w.close()
    rundir.finalize(d, rundir.read_run_info(d), {"state": "FAILED", "detail": "", "source": "test"})
    its = [ln.split(",")[3] for ln in (d / "iterations.csv").read_text().splitlines()[1:]]
    per_rank = {ln.split(",")[2] for ln in (d / "rank-iterations.csv").read_text().splitlines()[1:]}
    assert its == ["-1", "0"] and per_rank == {"-1", "0"}


# ----------------------------------------------------------------------------- what a newcomer meets

def test_env_help_says_what_is_carried() -> None:
    from orchestrator.actions.args import env_help
    from orchestrator.submission.runspec import FORWARD_NAMES, job_env

    text = env_help()
    carried = dict(job_env({"NCCL_DEBUG": "INFO", "NVSHMEM_X": "1", "GLOO_Y": "1", "REFITCTL_FAULT": "raise",
                            "REFITCTL_SECRET": "s", "REFITCTL_RUNS_DIR": "/r"}, (), None))
    assert {"NCCL_DEBUG", "NVSHMEM_X", "GLOO_Y", "REFITCTL_FAULT"} <= set(carried)
    assert "REFITCTL_SECRET" not in carried and "REFITCTL_RUNS_DIR" not in carried
    assert "NCCL_*" in text and "NVSHMEM_*" in text and "GLOO_*" in text and "REFITCTL_*" not in text.split("(")[0]
    assert all(n in text for n in FORWARD_NAMES) and "no other REFITCTL_* variable" in text


def test_plan_of_a_large_world_prints_its_summary_first() -> None:
    code, out, _ = cli("plan", "kimi-k2")
    lines = out.splitlines()
    assert code == 0 and max(map(len, lines)) < 200 and len(lines) < 30, (max(map(len, lines)), len(lines))
    assert "GPUs: 128 ranks on 128 GPUs of 16 nodes (each: --detail)" in out
    assert "Predicted refit time" in out and "--detail" in lines[-1]
    code, detail, _ = cli("plan", "kimi-k2", "--detail")
    assert code == 0 and "Per-rank bytes" in detail and len(detail.splitlines()) > 128
    code, small, _ = cli("plan", "config-4")
    assert code == 0 and "Per-rank bytes" in small  # a seed config's world is shown whole, as before


@pytest.mark.parametrize("argv, says", [
    (["plan", "config-4", "--num-layer", "3"], "unrecognized arguments: --num-layer (did you mean --num-layers?) 3"),
    (["plan", "config-4", "--tensor-model-paralel-size=2"],
     "--tensor-model-paralel-size=2 (did you mean --tensor-model-parallel-size?)"),
    (["sumbit", "config-4"], "invalid choice: 'sumbit'"),
    (["submit", "config-4", "--cluster", "lokal"], "(did you mean local?)"),
    (["plan", "config-4", "--zzz"], "unrecognized arguments: --zzz: see"),
])
def test_a_misspelled_flag_gets_the_nearest_one(argv: list[str], says: str) -> None:
    code, _, err = cli(*argv)
    line = one_line(code, err)
    assert says in line, line
    if argv[0] == "sumbit":
        assert "(did you mean submit?)" in line
