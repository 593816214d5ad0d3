"""A detached SLURM run's end, remembered: once `sacct` has said a job is over (it has left
slurmctld's queue and its state is final), that answer is kept in RUN_DIR/slurm-state.json and every
later look reads it instead of asking SLURM again.

Only an end read from accounting is kept (a job still in the queue can be requeued); the file names
the job id and submission time it belongs to, so a run directory copied or resubmitted under another
job is asked again. Writing is best effort: a read-only or full run directory only means SLURM is
asked again next time. The run's own final state (run.json `final`, written by the refitctl that
followed it) still comes first; this is for runs nobody followed to their end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from orchestrator.state.runfiles import JobRecord
from refit_core.jsonfile import write_json_atomic

CACHE_FILE = "slurm-state.json"
log = logging.getLogger(__name__)


def cached(run_dir: Path, job: JobRecord) -> tuple[str, str] | None:
    """(state, detail) remembered for this job, or None (no file, another job's, or unreadable)."""
    try:
        path = run_dir / CACHE_FILE
        if path.is_symlink() or not path.is_file():
            return None
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("job_id") != job.job_id or data.get("submitted") != job.submitted:
        return None
    state, detail = data.get("state"), data.get("detail", "")
    return (state, detail) if isinstance(state, str) and state and isinstance(detail, str) else None


def remember(run_dir: Path, job: JobRecord, state: str, detail: str) -> None:
    """Keep a final state read from accounting; never fails (a run directory that cannot be written: asked again)."""
    path = run_dir / CACHE_FILE
    try:
        if path.is_symlink():
            return
        write_json_atomic(path, {"job_id": job.job_id, "submitted": job.submitted, "state": state, "detail": detail,
                                 "source": "sacct"})
    except OSError as e:
        log.debug("%s: not cached (%s)", path, e)
