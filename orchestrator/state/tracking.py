"""One look at a run: its job state, the ranks' progress and, once it is over, its results.

`snapshot()` is what `status`, `results`, `runs` and the live view read. It never writes: a run
that is over but not finalized yet (no final state in run.json, no results.json) is shown as it is,
its state asked from the scheduler and its results aggregated from the rank files in memory.
Finalizing (`rundir.finalize`) is the controller's and the submitting refitctl's job.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from orchestrator.state.failures import Diagnosis, diagnose, process_ends
from orchestrator.state import slurmcache, slurmquery
from orchestrator.state.jobstate import JobState, job_state
from orchestrator.state.slurmquery import Look
from refit_core.errors import RunDirError
from orchestrator.state.rundir import Progress, progress, progress_from_summary, results
from orchestrator.state.runfiles import RunInfo, read_run_info
from orchestrator.state.summary import read_summary


@dataclass(frozen=True)
class Snapshot:
    run_dir: Path
    info: RunInfo  # run.json
    state: JobState
    progress: Progress
    results: dict[str, Any] | None  # once the job is over

    @property
    def verified(self) -> bool:
        return self.state.state == "COMPLETED" and bool(self.results and self.results.get("verified"))

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """Which rank failed first and why, every other rank that did not finish (orchestrator.state.failures)."""
        ends, order = process_ends(self.run_dir, self.info.job) if self.state.final else ({}, [])
        return diagnose(self.progress, ends, order, self.state.state)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def job_label(self) -> str:
        job = self.info.job
        return f"{job.cluster} job {job.job_id}" if job else "not submitted"


def snapshot(run_dir: Path, records: bool = False, slurm: Look | None = None) -> Snapshot:
    """The run now. A finished run is read from its summary (orchestrator/state/summary.py: the same cost
    at any number of iterations); `records`: from its rank files and results.json (`refitctl results`);
    `slurm`: one look at many runs' SLURM jobs at once (`slurm_look`)."""
    info = read_run_info(run_dir)
    if info.final is not None:
        state = JobState(info.final.state, info.final.detail, info.final.source)
        summary = None if records else read_summary(run_dir)
        if summary is not None:
            with contextlib.suppress(RunDirError):  # a damaged summary: the records decide
                prog = progress_from_summary(summary[1], summary[2], info.active_ranks, info.warmup,
                                             info.iterations)
                return Snapshot(run_dir, info, state, prog, summary[0])
    else:
        state = job_state(run_dir, info.job, slurm=slurm)
    prog = progress(run_dir, info.active_ranks, info.warmup, info.iterations)
    res = results(run_dir, info) if state.final else None
    return Snapshot(run_dir, info, state, prog, res)


def slurm_look(run_dirs: Sequence[Path]) -> Look | None:
    """One batched, bounded SLURM query for every run among `run_dirs` whose state only SLURM can tell
    (submitted there, not finalized, its end not remembered), started now and answered while the runs are
    read; None when there is none. A directory that cannot be read is left to `snapshot` to report."""
    jobs = []
    for d in run_dirs:
        try:
            info = read_run_info(d)
        except (RunDirError, OSError):
            continue
        job = info.job
        if info.final is None and job is not None and job.cluster == "slurm" and slurmcache.cached(d, job) is None:
            jobs.append(job)
    if not jobs:
        return None
    return slurmquery.start([j.job_id for j in jobs], min(j.submitted for j in jobs))


def snapshots(run_dirs: Sequence[Path]) -> list[Snapshot]:
    """Every run of `run_dirs`, with one SLURM query for all of them (not one per run)."""
    view = slurm_look(run_dirs)
    return [snapshot(d, slurm=view) for d in run_dirs]


def finalize_over(snaps: list[Snapshot]) -> list[Snapshot]:
    """For the refitctl that submitted and followed the runs: persist what is over (rundir.finalize);
    a run whose directory cannot be written keeps its files as they are (a warning, not an error)."""
    from orchestrator.state.rundir import finalize
    from orchestrator.submission.prepared import now_iso

    out = []
    for s in snaps:
        if s.state.final and s.info.final is None and s.state.state != "UNKNOWN":
            try:
                finalize(s.run_dir, s.info, {"state": s.state.state, "detail": s.state.detail,
                                             "source": s.state.source, "ended": now_iso()})
                s = snapshot(s.run_dir)
            except (OSError, RunDirError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                print(f"refitctl: warning: {s.run_dir}: results not saved ({why})", file=sys.stderr)
        out.append(s)
    return out
