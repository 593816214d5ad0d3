"""One look at a run: its job state, the ranks' progress and, once it is over, its results.

`snapshot()` is what `status`, `results`, `runs` and the live view read. The first time a run is
seen over, it is finalized (results.json aggregated from the rank files if rank 0 wrote none, the
CSVs, the final state in run.json), so a detached run's data is complete whoever looks first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from orchestrator.failures import Diagnosis, diagnose, process_ends
from orchestrator.jobstate import JobState, job_state
from orchestrator.rundir import Progress, finalize, load_run, now_iso, progress, results


@dataclass(frozen=True)
class Snapshot:
    run_dir: Path
    info: dict[str, Any]
    state: JobState
    progress: Progress
    results: dict[str, Any] | None  # once the job is over

    @property
    def verified(self) -> bool:
        return self.state.state == "COMPLETED" and bool(self.results and self.results.get("verified"))

    @cached_property
    def diagnosis(self) -> Diagnosis:
        """Which rank failed first and why, every other rank that did not finish (orchestrator.failures)."""
        ends, order = process_ends(self.run_dir, self.info) if self.state.final else ({}, [])
        return diagnose(self.progress, ends, order, self.state.state)

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def job_label(self) -> str:
        job = self.info.get("job") or {}
        return f"{job.get('cluster', '?')} job {job.get('job_id', '?')}" if job else "not submitted"


def snapshot(run_dir: Path) -> Snapshot:
    info = load_run(run_dir)
    final = info.get("final")
    if final:
        state = JobState(final["state"], final.get("detail", ""), final.get("source", ""))
    else:
        state = job_state(run_dir, info)
    prog = progress(run_dir, info)
    res = None
    if state.final:
        if final is None and state.state != "UNKNOWN":  # UNKNOWN may clear up later: ask again next time
            res = finalize(run_dir, info, {"state": state.state, "detail": state.detail, "source": state.source,
                                           "ended": now_iso()})
            info = load_run(run_dir)
        else:
            res = results(run_dir, info)
    return Snapshot(run_dir, info, state, prog, res)
