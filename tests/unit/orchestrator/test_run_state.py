"""Run directories as state (issue 15, items 4, 5, 7, 8, 9): damaged files, reading without writing,
a full disk, Ctrl-C during a submission, appended rank records, two `sweep --resume` at once.

Most run directories here are made by hand (the same writers a job uses: RankRecordWriter, aggregate),
so the tests need no job; the sweep test uses a fake SLURM (sbatch, squeue, sacct on PATH).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT
from orchestrator.submission import executor
from orchestrator.cli import main
from orchestrator.state.runfiles import JobStateFile, RunInfo, SweepInfo
from refit_core.errors import RunDirError
from refit_core.results import aggregate, read_results
from refit_core.records import IterationRecord, RankFileReader, RankRecord, RankRecordWriter, load_rank_record, rank_path, read_rank_records
from helpers import SMALL

PY = sys.executable


def cli(*argv: str) -> tuple[int, str, str]:
    """refitctl in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def one_line(code: int, err: str) -> str:
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("refitctl: error: "), (code, err)
    return lines[0]


def write_ranks(d: Path, n: int = 3, iterations: int = 3, verified: bool = True) -> None:
    for r in range(n):
        w = RankRecordWriter(rank_path(d, r))
        rec = RankRecord(r, "source" if r < 2 else "destination")
        w.save(rec)
        for k in range(iterations):
            rec.iterations.append(IterationRecord(k - 1, k == 0, 2.0 + r + k, launches=1))
            w.save(rec)
        rec.verified = rec.complete = verified
        w.save(rec)
        w.close()


def craft_run(root: Path, name: str, final: str | None = "COMPLETED", job: dict | None = None,
              results: bool = True) -> Path:
    """A run directory as a finished local run leaves it (3 ranks, 1 warm-up + 2 timed iterations)."""
    d = root / name
    (d / "logs").mkdir(parents=True)
    info = {"version": 1, "name": name, "config": "config-4", "run_dir": str(d), "created": "2026-11-29T10:00:00",
            "command": "refitctl submit config-4", "spec": {"method": "gloo"}, "world_size": 3, "active_ranks": 3,
            "delivered_bytes": 4_000_000, "iterations": 2, "warmup": 1, "mode": "non-collocated",
            "source": {"tp": 2, "ep": 1, "pp": 1}, "destination": {"tp": 1, "ep": 1, "pp": 1}, "job": job,
            "final": {"state": final, "detail": "", "source": "test"} if final else None}
    (d / "run.json").write_text(json.dumps(info))
    write_ranks(d)
    if results:
        (d / "results.json").write_text(json.dumps(aggregate(d, [0, 1, 2], 4_000_000)))
    return d


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime (ns): what a reading command must leave alone."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- item 4: one reader per file

RUN_OK = json.loads(json.dumps({"name": "r", "config": "config-4", "spec": {"method": "gloo"}, "world_size": 3,
                                "active_ranks": 3, "delivered_bytes": 1, "iterations": 2, "warmup": 1,
                                "mode": "non-collocated", "source": {"tp": 2}, "destination": {"tp": 1},
                                "job": None, "final": None}))


@pytest.mark.parametrize("data, says", [
    ([1, 2], "run.json is not a JSON object"),
    ({}, "run.json has no field 'spec'"),
    ({**RUN_OK, "active_ranks": "3"}, "run.json field 'active_ranks' is not an integer"),
    ({**RUN_OK, "active_ranks": True}, "run.json field 'active_ranks' is not an integer"),
    ({**RUN_OK, "active_ranks": 5}, "run.json says 5 active ranks of a world of 3"),
    ({**RUN_OK, "job": {"cluster": "local", "job_id": 7}}, "run.json field 'job_id' in 'job' is not a string"),
    ({**RUN_OK, "final": {"state": 5}}, "run.json field 'state' in 'final' is not a string"),
    ({**RUN_OK, "source": [2, 1]}, "run.json field 'source' is not an object"),
])
def test_run_json_reader_names_the_file_and_the_field(data: Any, says: str) -> None:
    with pytest.raises(RunDirError) as e:
        RunInfo.from_json(data, Path("x/run.json"))
    assert str(e.value).startswith(f"x/{says}") and e.value.short() == says


@pytest.mark.parametrize("cls, data, says", [
    (JobStateFile, {"state": 5}, "job-state.json field 'state' is not a string"),
    (JobStateFile, {"state": "FAILED", "exit_codes": [0, "x"]},
     "job-state.json field 'exit_codes' holds an item that is not an integer or null"),
    (JobStateFile, "RUNNING", "job-state.json is not a JSON object"),
    (SweepInfo, {"name": "s", "configs": ["config-4"], "runs": {"config-4": ["../../etc"]}},
     "sweep.json names a run directory '../../etc' outside the sweep"),
    (SweepInfo, {"name": "s", "configs": "config-4", "runs": {}}, "sweep.json field 'configs' is not a list"),
])
def test_job_state_and_sweep_readers(cls: Any, data: Any, says: str) -> None:
    with pytest.raises(RunDirError) as e:
        cls.from_json(data, Path(says.split()[0]))
    assert e.value.short() == says


def test_results_reader_keeps_its_recovery_advice(tmp_path: Path) -> None:
    p = tmp_path / "results.json"
    for content, says in ((b"\x00\xff", "is damaged (truncated or corrupt: UnicodeDecodeError)"),
                          (b'{"iterations": [', "is damaged (truncated or corrupt: JSONDecodeError)"),
                          (b"[1, 2]", "is damaged (not a results file: not a JSON object)"),
                          (b'{"iterations": [], "verified": "yes"}',
                           "is damaged (not a results file: field 'verified' is not true or false)")):
        p.write_bytes(content)
        with pytest.raises(RunDirError) as e:
            read_results(p)
        assert str(e.value) == f"{p} {says}: delete it and refitctl aggregates the results again from the rank " \
                               "files (ranks/)"


DAMAGE = {
    "bytes": ("run.json", os.urandom(64) + b"\xff", "run.json is not valid JSON"),
    "list": ("run.json", b"[1, 2]", "run.json is not a JSON object"),
    "empty-object": ("run.json", b"{}", "run.json has no field"),
    "typed": ("run.json", None, "run.json field 'active_ranks' is not an integer"),
    "state-5": ("job-state.json", b'{"state": 5}', "job-state.json field 'state' is not a string"),
}


def test_a_broken_run_is_listed_broken_and_never_breaks_another(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    good = craft_run(tmp_path, "good")
    broken = {}
    for key, (name, content, says) in DAMAGE.items():
        job = {"cluster": "local", "job_id": "1", "folder": "", "submitted": 0, "controller_pid": None}
        d = craft_run(tmp_path, f"broken-{key}", final=None if key == "state-5" else "COMPLETED",
                      job=job if key == "state-5" else None)
        if content is None:
            info = json.loads((d / name).read_text())
            content = json.dumps({**info, "active_ranks": "3"}).encode()
        (d / name).write_bytes(content)
        broken[d.name] = says
    code, out, err = cli("runs", "--runs-dir", str(tmp_path))
    assert code == 0 and err == "", err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert "COMPLETED" in rows[good.name]
    for name, says in broken.items():
        assert "BROKEN" in rows[name] and says in rows[name], (name, rows[name])
        for cmd in (["status"], ["results"], ["results", "--json"], ["results", "--csv"], ["cancel"],
                    ["report", "-o", str(tmp_path / "out")]):
            code, out, err = cli(*cmd, name, "--runs-dir", str(tmp_path))
            line = one_line(code, err)
            if cmd[0] != "report":  # report reads config/plan first: its line names that file
                assert says in line, (cmd, line)
    for cmd in (["status"], ["results"], ["results", "--json"]):
        code, out, err = cli(*cmd, "good", "--runs-dir", str(tmp_path))
        assert code == 0 and "Traceback" not in err, err


# ----------------------------------------------------------------------------- item 5: reading never writes

def _ended_not_finalized(root: Path) -> Path:
    """A local run whose controller recorded COMPLETED but nobody finalized: no final, no results.json."""
    job = {"cluster": "local", "job_id": "1", "folder": "", "submitted": 0, "controller_pid": None}
    d = craft_run(root, "ended", final=None, job=job, results=False)
    (d / "job-state.json").write_text(json.dumps({"state": "COMPLETED", "exit_codes": [0, 0, 0], "ended": 1.0}))
    return d


def test_reading_commands_write_nothing_and_show_the_run_as_it_is(tmp_path: Path) -> None:
    d = _ended_not_finalized(tmp_path)
    before = tree(tmp_path)
    code, out, _ = cli("status", d.name, "--runs-dir", str(tmp_path))
    assert code == 0 and "COMPLETED" in out and "verified" in out
    code, out, _ = cli("results", d.name, "--json", "--runs-dir", str(tmp_path))
    res = json.loads(out)
    assert code == 0 and res["state"] == "COMPLETED" and res["verified"] and res["timed_iterations"] == 2
    assert res["aggregated_by"].startswith("refitctl")
    assert cli("results", d.name, "--csv", "--runs-dir", str(tmp_path))[0] == 0
    assert cli("runs", "--runs-dir", str(tmp_path))[0] == 0
    assert tree(tmp_path) == before


@pytest.fixture
def mount_point(tmp_path: Path) -> Any:
    """A fresh mount point; the test mounts on it (root only) and it is unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def _mount(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    p = subprocess.run(["mount", *args], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mount failed: {p.stderr.strip()}")


def test_reading_commands_work_on_a_read_only_mount(tmp_path: Path, mount_point: Path) -> None:
    src = tmp_path / "src"
    _ended_not_finalized(src)
    _mount("--bind", "-o", "ro", str(src), str(mount_point))
    for cmd in (["status", "ended"], ["results", "ended"], ["results", "ended", "--json"], ["runs"]):
        code, out, err = cli(*cmd, "--runs-dir", str(mount_point))
        assert code == 0 and err == "", (cmd, err)


def test_a_submit_on_a_full_disk_is_one_line_and_leaves_nothing(mount_point: Path) -> None:
    _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point))
    fd = os.open(mount_point / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):  # fill it: the run directory's files cannot be written
        while True:
            os.write(fd, b"x" * 4096)
    os.close(fd)
    p = subprocess.run([PY, "-m", "orchestrator", "submit", "config-4", "--cluster", "local", "--gpus", "3",
                        "--refit-method", "gloo", "--detach", "--runs-dir", str(mount_point / "runs"), *SMALL],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    line = one_line(p.returncode, p.stderr)
    assert "No space left on device" in line and "nothing was submitted" in line
    assert list((mount_point / "runs").iterdir()) == []


def test_a_failed_write_removes_the_half_made_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same without root: the plan summary's write fails (ENOSPC), after config.json and layout.txt."""
    import errno

    from orchestrator.state import rundir

    real = rundir.write_json_atomic

    def full(path: Path, data: Any) -> None:
        if path.name == "plan.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(rundir, "write_json_atomic", full)
    code, _, err = cli("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo",
                       "--detach", "--runs-dir", str(tmp_path), *SMALL)
    assert "No space left on device" in one_line(code, err)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- item 7: Ctrl-C during submit

def _fake_submit(monkeypatch: pytest.MonkeyPatch, start: bool, then: str) -> None:
    """The local cluster's submission that (maybe) starts the job (the controller's first file), then gets a Ctrl-C."""

    def submit(specs: Any, run_dirs: Any, folder: Path) -> list[executor.JobRef]:
        if start:
            (run_dirs[0] / "job-state.json").write_text('{"state": "RUNNING"}')
        if then == "signal":  # the terminal's Ctrl-C arrives while the submission is under way
            os.kill(os.getpid(), signal.SIGINT)
        elif then == "raise":
            raise KeyboardInterrupt
        return [executor.JobRef("local", "4242", str(folder), time.time(), None)]

    monkeypatch.setattr(executor, "submit_local", submit)


@pytest.mark.parametrize("start, then, kept", [(True, "signal", True), (True, "raise", True),
                                               (False, "raise", False)])
def test_ctrl_c_during_submit_never_deletes_a_started_job(start: bool, then: str, kept: bool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_submit(monkeypatch, start, then)
    code, out, err = cli("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo",
                         "--runs-dir", str(tmp_path), *SMALL)
    assert code == 130
    dirs = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert len(dirs) == int(kept)
    if kept:
        info = json.loads((dirs[0] / "run.json").read_text())
        assert (info["job"] is not None) == (then == "signal")
        code, listing, _ = cli("runs", "--runs-dir", str(tmp_path))
        assert code == 0 and dirs[0].name in listing
    if then == "signal":
        assert "Detached" in out and "job 4242 was submitted and keeps running" in out


# ----------------------------------------------------------------------------- item 8: appended rank records

def _rec(k: int) -> IterationRecord:
    return IterationRecord(k, False, 1.5, bytes_in=1, bytes_out=2, bytes_local=0, phases_ms={"transfer": 1.0},
                           launches=3)


def test_each_save_appends_only_what_changed(tmp_path: Path) -> None:
    path = rank_path(tmp_path, 0)
    w = RankRecordWriter(path)
    rec = RankRecord(0, "source")
    w.save(rec)
    assert json.loads(path.read_text()) == {"kind": "header", "format": 2, "rank": 0, "role": "source",
                                            "verified": False, "complete": False, "error": None, "restarts": 0}
    sizes = []
    for k in range(200):
        rec.iterations.append(_rec(k))
        w.save(rec)
        sizes.append(path.stat().st_size)
    growth = {b - a for a, b in zip(sizes, sizes[1:])}
    assert max(growth) - min(growth) <= 2  # one line per iteration (its digits grow), whatever came before
    rec.verified = rec.complete = True
    w.save(rec)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 200 + 1 and json.loads(lines[-1]) == {"kind": "update",
                                                                   "fields": {"verified": True, "complete": True}}
    assert json.loads(lines[1]) == {"kind": "iteration", "iteration": 0, "warmup": False, "time_ms": 1.5,
                                    "bytes_in": 1, "bytes_out": 2, "bytes_local": 0, "phases_ms": {"transfer": 1.0},
                                    "launches": 3, "verified": True}
    got = load_rank_record(path)
    assert got.verified and got.iterations == [_rec(k) for k in range(200)]


def test_the_reader_parses_only_what_is_new(tmp_path: Path) -> None:
    path = rank_path(tmp_path, 1)
    w = RankRecordWriter(path)
    rec = RankRecord(1, "destination")
    w.save(rec)
    reader = RankFileReader(path)
    assert reader.read().iterations == [] and reader._line == 1  # the header
    for k in range(50):
        rec.iterations.append(_rec(k))
        w.save(rec)
        before = reader._line
        got = reader.read()
        assert got is not None and len(got.iterations) == k + 1 and reader._line == before + 1
    offset = reader._offset
    with open(path, "a") as f:  # a writer killed in the middle of a line: not read until it is whole
        f.write('{"kind": "iteration", "iteration": 50')
    assert len(reader.read().iterations) == 50 and reader._offset == offset
    w2 = RankRecordWriter(path)  # a restarted attempt replaces the file: read again from the start
    w2.save(RankRecord(1, "destination", [_rec(0)]))
    assert len(reader.read().iterations) == 1


def test_damaged_and_old_format_rank_files(tmp_path: Path) -> None:
    write_ranks(tmp_path, n=2)
    with open(rank_path(tmp_path, 1), "ab") as f:
        f.write(b"\x00\xff not json\n")
    old = tmp_path / "ranks" / "rank-00002.json"  # the earlier format: the whole record in one JSON file
    old.write_text(json.dumps({"rank": 2, "role": "destination", "iterations": [_rec(0).to_json()], "verified": True,
                               "complete": True, "error": None}))
    records, problems = read_rank_records(tmp_path)
    assert [r.rank for r in records] == [0, 2] and records[1].iterations == [_rec(0)]
    assert problems == ["rank-00001.jsonl: unreadable (UnicodeDecodeError at line 6: truncated or corrupt)"]


def test_record_write_costs_the_same_at_100000_iterations(tmp_path: Path) -> None:
    """benchmarks/record_write.py's measurement, small: a save at iteration 100,000 is no slower than at 10."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from record_write import time_saves

    at_10, at_100k = time_saves(tmp_path, 10), time_saves(tmp_path, 100_000)
    assert at_100k < max(5 * at_10, 2e-3), (at_10, at_100k)


# ----------------------------------------------------------------------------- item 9: sweep.json under a lock

FAKE_SLURM = {
    # sbatch: slow (a window for a race), numbers its jobs 1001, 1002, ... and logs each call
    "sbatch": 'sleep 1\nn=$(( $(cat "$D/count" 2>/dev/null || echo 0) + 1 ))\necho $n > "$D/count"\n'
              'echo "$@" >> "$D/calls"\necho "Submitted batch job $((1000 + n))"\n',
    # the first job is over (sacct says FAILED); every later one is PENDING
    "squeue": 'for a in "$@"; do j=$a; case $a in -j) next=1;; *) [ -n "$next" ] && jid=$a && next=;; esac; done\n'
              '[ "$jid" = 1001 ] || echo "$jid|PENDING|None"\n',
    "sacct": 'echo "1001|FAILED|1:0|00:00:01"\n',
    "scontrol": "exit 1\n",
    "sinfo": 'echo debug\n',
}


def test_two_resumes_of_one_sweep_rerun_a_config_once(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in FAKE_SLURM.items():
        (bin_dir / tool).write_text(f"#!/bin/bash\n{body}")
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "D": str(tmp_path), "COLUMNS": "200"}
    runs = tmp_path / "runs"
    base = [PY, "-m", "orchestrator", "sweep"]
    opts = ["--cluster", "slurm", "--no-gpu-request", "--detach", "--runs-dir", str(runs)]
    p = subprocess.run([*base, "config-4", *opts, "--gpus", "3", "--refit-method", "gloo", *SMALL], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    sweep = next(runs.iterdir())
    procs = [subprocess.Popen([*base, "--resume", str(sweep), *opts], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(pr.wait(timeout=120), *pr.communicate()) for pr in procs]
    codes = sorted(o[0] for o in outs)
    assert codes == [0, 2], outs
    loser = next(o for o in outs if o[0] == 2)
    assert "config-4" in one_line(2, loser[2]) and "is still PENDING" in loser[2]
    data = json.loads((sweep / "sweep.json").read_text())
    assert data["runs"]["config-4"] == ["config-4", "config-4.2"] and data["jobs"] == ["1001", "1002"]
    assert len((tmp_path / "calls").read_text().splitlines()) == 2  # the first submission and one rerun
