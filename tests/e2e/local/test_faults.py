"""Failures and bad data: every rank exits in bounded time, the failing rank is named, nothing is lost.

Faults are injected with REFITCTL_FAULT (refit_core/execution/engine.py) into runs submitted through `refitctl`
with the local executor, in both modes (config-4: non-collocated, 3 ranks; collocated-4: 4 ranks), on
gloo, with `--refit-timeout 10`. The raise fault of a non-collocated run is
test_orchestrator_local.py's test_a_failing_rank_fails_the_job_and_shows_its_error; the SLURM cases
are in test_slurm.py. docs/reliability.md records what each fault does and how long it takes.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from jobs.supervisor import KILL_GRACE_S
from orchestrator.state.failures import ProcessEnd, diagnose, short_error, srun_ends
from orchestrator.state.rundir import Progress, RankProgress
from refit_core.records import load_rank_record, rank_files
from helpers import FAULT_AT, SMALL, only_run, refitctl, run_json

TIMEOUT = ["--refit-timeout", "10"]


# ----------------------------------------------------------------------------- pure: who failed first


def _progress(*ranks: tuple[int, str, int, str | None, float], active: int | None = None) -> Progress:
    recs = tuple(RankProgress(r, role, done, (1.0,) * done, False, False, err, mtime)
                 for r, role, done, err, mtime in ranks)
    return Progress(recs, active if active is not None else len(recs), 1, 2)


GLOO_RESET = ("RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:23788: Connection reset by peer. This is typically caused by a remote worker hanging")
GLOO_TIMEOUT = ("RuntimeError: [/__w/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out "
                "waiting 10000ms for send operation to complete")


def test_a_killed_rank_is_named_not_its_victims() -> None:
    """SIGKILL leaves no record; its peers' errors say only that a connection broke."""
    prog = _progress((0, "source", 2, GLOO_RESET, 5.0), (1, "source", 2, None, 1.0), (2, "destination", 2, GLOO_RESET, 4.0))
    d = diagnose(prog, {1: ProcessEnd(signal=9), 0: ProcessEnd(code=1), 2: ProcessEnd(code=1)}, [1, 0, 2], "FAILED")
    assert d.first is not None and (d.first.rank, d.first.kind) == (1, "killed")
    assert d.first.reason.startswith("killed by signal 9 (SIGKILL) in iteration 1") and "no error recorded" in d.first.reason
    assert [f.rank for f in d.others] == [0, 2] and all(f.kind == "peer" for f in d.others)
    assert "Connection reset by peer" in d.others[0].reason and "gloo" not in d.others[0].reason
    # without any exit status (a scheduler that says nothing), the silent rank is still the one named
    d = diagnose(prog, {}, [], "FAILED")
    assert d.first is not None and (d.first.rank, d.first.kind) == (1, "silent")


def test_a_raised_error_comes_before_the_peers_and_the_stopped() -> None:
    prog = _progress((0, "source", 1, "JobTerminated: received SIGTERM", 9.0),
                     (1, "source", 1, "RuntimeError: injected fault: rank 1 raised at iteration 0", 3.0),
                     (2, "destination", 1, GLOO_RESET, 2.0))
    d = diagnose(prog, {}, [], "FAILED")
    assert d.first is not None and d.first.rank == 1 and d.first.kind == "error"
    assert d.stopped == 1 and {f.kind for f in d.others} == {"peer", "stopped"}


def test_a_hung_rank_is_named_from_its_peers_timeouts() -> None:
    """The hung rank reports nothing (it is stopped) or its own watchdog; its peers time out waiting."""
    stopped = _progress((0, "source", 1, GLOO_TIMEOUT, 1.0), (1, "source", 1, GLOO_TIMEOUT, 1.1),
                        (2, "destination", 1, "JobTerminated: received SIGTERM", 6.0))
    d = diagnose(stopped, {0: ProcessEnd(code=1), 1: ProcessEnd(code=1)}, [0, 1], "FAILED")
    assert d.first is not None and (d.first.rank, d.first.kind) == (2, "hang")
    assert d.first.reason.startswith("hung in iteration 0") and "rank(s) 0, 1 timed out" in d.first.reason
    watchdog = _progress((0, "source", 1, GLOO_TIMEOUT, 1.0), (1, "source", 1, GLOO_TIMEOUT, 1.1),
                         (2, "destination", 1, "TimeoutError: iteration 0 did not finish within 20 s (...)", 6.0))
    d = diagnose(watchdog, {}, [], "FAILED")
    assert d.first is not None and (d.first.rank, d.first.kind) == (2, "hang") and "watchdog" in d.first.reason
    # on SLURM a hung rank that ignores SIGTERM is killed (srun: `task 2: Killed`) after its peers timed out
    silent = _progress((0, "source", 1, GLOO_TIMEOUT, 1.0), (1, "source", 1, GLOO_TIMEOUT, 1.1),
                       (2, "destination", 1, None, 0.5))
    d = diagnose(silent, {0: ProcessEnd(code=1), 1: ProcessEnd(code=1), 2: ProcessEnd(signal=9)}, [0, 1, 2], "FAILED")
    assert d.first is not None and (d.first.rank, d.first.kind) == (2, "hang")


def test_a_time_limit_or_cancel_names_nobody() -> None:
    prog = _progress((0, "source", 3, "JobTerminated: received SIGTERM", 1.0), (1, "source", 3, None, 1.0))
    for state in ("TIMEOUT", "CANCELLED"):
        d = diagnose(prog, {1: ProcessEnd(signal=9)}, [1], state)
        assert d.first is None and d.stopped == 2


def test_srun_messages_give_each_task_how_it_ended() -> None:
    log = """submitit INFO (2026-11-25 11:29:34,961) - Starting with JobEnvironment(job_id=48, ...)
srun: error: node1: task 1: Killed
srun: launch/slurm: _step_signal: Terminating StepId=48.0
srun: error: node1: tasks 0,2: Terminated
srun: error: node2: tasks 4-5: Exited with exit code 1
"""
    ends, order = srun_ends(log)
    assert order == [1, 0, 2, 4, 5]
    assert ends[1] == ProcessEnd(signal=9) and ends[0] == ProcessEnd(signal=15) and ends[5] == ProcessEnd(code=1)
    assert ends[1].describe() == "killed by signal 9 (SIGKILL)"


def test_short_error_drops_gloos_source_location() -> None:
    assert short_error(GLOO_TIMEOUT) == "RuntimeError: Timed out waiting 10000ms for send operation to complete"
    assert short_error("") == ""


# ----------------------------------------------------------------------------- faults through refitctl

# (config, world, fault, rank that fails, its role, what `status` must say after "first failure: rank R (role): ",
#  the diagnosis' kind)
CASES = [
    ("config-4", 3, "kill", 2, "destination", "killed by signal 9 (SIGKILL) in iteration 0", "killed"),
    ("config-4", 3, "hang", 2, "destination", "hung in iteration 0", "hang"),
    ("config-4", 3, "corrupt", 2, "destination",
     "VerificationError: rank 2: decoder.layers.1.self_attention.linear_qkv.layer_norm_weight wrong at global index (",
     "error"),
    ("collocated-4", 4, "raise", 1, "source+destination", "RuntimeError: injected fault: rank 1 raised at iteration 1",
     "error"),
    ("collocated-4", 4, "kill", 1, "source+destination", "killed by signal 9 (SIGKILL) in iteration 0", "killed"),
    ("collocated-4", 4, "hang", 1, "source+destination", "hung in iteration 0", "hang"),
    ("collocated-4", 4, "corrupt", 1, "source+destination", "VerificationError: rank 1: ", "error"),
]


@pytest.mark.parametrize("config,world,fault,rank,role,says,kind", CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_fault_fails_the_job_and_names_the_rank(config: str, world: int, fault: str, rank: int, role: str, says: str,
                                                 kind: str, tmp_path: Path) -> None:
    p = refitctl("submit", config, "--cluster", "local", "--gpus", str(world), "--refit-method", "gloo", "--poll", "0.5",
                 *TIMEOUT, "--env", f"REFITCTL_FAULT={fault}:rank={rank}:iteration=1", *SMALL, runs=tmp_path, check=1)
    assert "FAILED" in p.stdout and "NOT verified" in p.stdout
    d = only_run(tmp_path)
    status = refitctl("status", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=0).stdout
    assert f"first failure: rank {rank} ({role}): {says}" in status, status
    res = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert res["state"] == "FAILED" and not res["verified"] and not res["complete"]
    assert res["first_failure"]["rank"] == rank and res["first_failure"]["kind"] == kind
    assert res["median_ms"] is None  # the failed iteration is not reported as a time
    # every rank is gone within a bound: a crash at once, a hang once its peers' --refit-timeout fires
    fault_at = float(FAULT_AT.search((d / "logs" / f"rank-{rank:05d}.log").read_text()).group(1))
    ended = json.loads((d / "job-state.json").read_text())["ended"]
    bound = (10 + KILL_GRACE_S + 8) if fault == "hang" else (KILL_GRACE_S + 8)
    assert 0 < ended - fault_at < bound, f"every rank exited {ended - fault_at:.1f} s after the fault"


def test_a_job_stopped_after_k_iterations_keeps_them(tmp_path: Path) -> None:
    """Rank 0 hangs in the 4th iteration (warm-up + 2 timed done); the time limit ends the job."""
    p = refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
                 "--num-benchmark-iterations", "5", "--time", "0:15", "--refit-timeout", "600",
                 "--env", "REFITCTL_FAULT=hang:rank=0:iteration=3", *SMALL, runs=tmp_path, check=1)
    assert "TIMEOUT" in p.stdout
    d = only_run(tmp_path)
    out = refitctl("results", d.name, runs=tmp_path, env={"COLUMNS": "400"}, check=1).stdout
    assert "incomplete: 2 of 5 timed iterations recorded" in out
    res = json.loads(refitctl("results", d.name, "--json", runs=tmp_path, check=1).stdout)
    assert res["state"] == "TIMEOUT" and not res["complete"] and res["first_failure"] is None
    assert [i["iteration"] for i in res["iterations"]] == [-1, 0, 1] and res["timed_iterations"] == 2
    assert res["median_ms"] > 0  # the iterations that finished keep their times
    csv = refitctl("results", d.name, "--csv", runs=tmp_path, check=1).stdout.splitlines()
    assert len(csv) == 4
    # the hung rank recorded 3; a source that only sends may have finished one more before it was stopped
    counts = [len(load_rank_record(f).iterations) for f in rank_files(d)]
    assert counts[0] == 3 and min(counts) == 3, counts


# ----------------------------------------------------------------------------- damaged files, lost state

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("finished")
    refitctl("submit", "config-4", "--cluster", "local", "--gpus", "3", "--refit-method", "gloo", "--poll", "0.5",
             *SMALL, runs=runs, check=0)
    return only_run(runs)


def _copy(run: Path, root: Path, name: str) -> Path:
    d = root / name
    shutil.copytree(run, d)
    return d


def test_damaged_results_are_reported_and_other_runs_still_list(finished_run: Path, tmp_path: Path) -> None:
    good = _copy(finished_run, tmp_path, "good")
    truncated = _copy(finished_run, tmp_path, "truncated")
    text = (truncated / "results.json").read_text()
    (truncated / "results.json").write_text(text[: len(text) // 2])
    not_results = _copy(finished_run, tmp_path, "not-results")
    (not_results / "results.json").write_text("[1, 2]")
    bad_rank = _copy(finished_run, tmp_path, "bad-rank")
    (bad_rank / "ranks" / "rank-00001.jsonl").write_bytes(b"\x00\xff{\"rank\": 1, \"iter\n")
    no_run_json = _copy(finished_run, tmp_path, "bad-run-json")
    (no_run_json / "run.json").write_text("{")
    for d in (good, truncated, not_results, bad_rank, no_run_json):  # as runs finalized before summary.json:
        (d / "summary.json").unlink()  # `runs` reads their records (with one, it reads only the summary)

    for d, says in ((truncated, "results.json is damaged (truncated or corrupt"),
                    (not_results, "results.json is damaged (not a results file"),
                    (bad_rank, "rank file rank-00001.jsonl: unreadable"),
                    (no_run_json, "run.json is not valid JSON")):
        for fmt in ([], ["--json"], ["--csv"]):
            p = refitctl("results", d.name, *fmt, runs=tmp_path, check=2)
            lines = p.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("refitctl: error: ") and says in lines[0], p.stderr
            assert "Traceback" not in p.stderr + p.stdout
    listing = refitctl("runs", runs=tmp_path, env={"COLUMNS": "300"}, check=0).stdout
    for d in (good, truncated, not_results, bad_rank):
        assert d.name in listing
    assert listing.count("BROKEN") >= 3 and "COMPLETED" in listing
    assert refitctl("results", good.name, runs=tmp_path, check=0).returncode == 0
    # nothing is lost: without the damaged results.json, refitctl aggregates the rank files again
    (truncated / "results.json").unlink()
    res = json.loads(refitctl("results", truncated.name, "--json", runs=tmp_path, check=0).stdout)
    assert res["verified"] and res["timed_iterations"] == 2


def _fake_slurm(bin_dir: Path, message: str) -> None:
    bin_dir.mkdir()
    for tool in ("squeue", "sacct", "scontrol", "sinfo", "sbatch", "scancel"):
        p = bin_dir / tool
        p.write_text(f"#!/bin/sh\necho '{tool}: error: {message}' >&2\nexit 1\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("slurm", ["failing", "missing"])
def test_lost_slurm_state_is_said_plainly(slurm: str, finished_run: Path, tmp_path: Path) -> None:
    """squeue/sacct that fail (controller down, no accounting) or are not installed: status says so, no crash."""
    runs = tmp_path / "runs"
    kept, lost = _copy(finished_run, runs, "kept-results"), _copy(finished_run, runs, "lost")
    for d in (kept, lost):
        info = run_json(d)
        info.update(job={"cluster": "slurm", "job_id": "424242", "folder": str(d / "submitit"), "submitted": 0},
                    final=None)
        (d / "run.json").write_text(json.dumps(info))
    (lost / "results.json").unlink()
    bin_dir = tmp_path / "bin"
    if slurm == "failing":
        _fake_slurm(bin_dir, "Slurm accounting storage is disabled")
    else:
        bin_dir.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin" if slurm == "failing" else str(bin_dir), "COLUMNS": "300"}
    out = refitctl("status", lost.name, runs=runs, env=env, check=0).stdout
    assert "UNKNOWN" in out and "SLURM no longer knows job 424242" in out
    assert ("accounting storage is disabled" in out) if slurm == "failing" else ("sacct not found" in out)
    out = refitctl("status", kept.name, runs=runs, env=env, check=0).stdout
    assert "COMPLETED" in out and "results.json says verified" in out
    listing = refitctl("runs", runs=runs, env=env, check=0).stdout
    assert "lost" in listing and "kept-results" in listing and "Traceback" not in listing
    assert refitctl("cancel", lost.name, runs=runs, env=env, check=0).returncode == 0
