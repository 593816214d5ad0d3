"""summary.json: what a finished run shows, written once when it is finalized, so reading it costs the same
at 10 iterations and at 100,000 (issue 25, item 5).

`status`, `runs`, sweeps and `report` read a finished run from here, never from its records: the rank
files and results.json grow with every iteration (100,000 iterations: 60 MB of rank records, 14 MB of
results, 10 s to parse), the summary does not. It holds:

- `results`: results.json's figures with `iterations` cut to a sample (the first `HEAD`, the last `TAIL`
  and evenly spaced ones between, `SAMPLE` at most), `iterations_recorded` and `timed_recorded` the counts
  of the whole; what the final table and the report's charts show.
- `ranks`: each rank's progress as the records left it (iterations done, the last time, verified,
  complete, error, phase): what the diagnosis of a failure reads.

`refitctl results` (the table, --csv, --json) still reads the records: that command is about them.
A run finalized before summaries existed, or whose summary is damaged, is read from its records as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from refit_core.errors import RunDirError
from refit_core.jsonfile import Fields, read_json

SUMMARY_FILE = "summary.json"
FORMAT = 1
HEAD, TAIL, SAMPLE = 6, 10, 1000


def sample(its: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first HEAD, the last TAIL and evenly spaced iterations between: SAMPLE at most, in order."""
    if len(its) <= SAMPLE:
        return list(its)
    middle = its[HEAD:-TAIL]
    step = len(middle) / (SAMPLE - HEAD - TAIL)
    return [*its[:HEAD], *(middle[int(k * step)] for k in range(SAMPLE - HEAD - TAIL)), *its[-TAIL:]]


def summary_json(res: dict[str, Any], prog: Any) -> dict[str, Any]:
    """summary.json's content from the run's results and its ranks' progress (`rundir.Progress`; pure)."""
    its = res.get("iterations", [])
    small = {**res, "iterations": sample(its), "iterations_recorded": len(its),
             "timed_recorded": sum(1 for i in its if not i.get("warmup"))}
    ranks = [{"rank": r.rank, "role": r.role, "done": r.done, "last_ms": r.last_ms, "verified": r.verified,
              "complete": r.complete, "error": r.error, "mtime": r.mtime, "phase": r.phase,
              "phase_since": r.phase_since} for r in prog.ranks]
    return {"format": FORMAT, "results": small, "ranks": ranks, "problems": list(prog.problems)}


def read_summary(run_dir: Path) -> tuple[dict[str, Any], list[Fields], list[str]] | None:
    """(results, each rank's fields, problems) of a finished run from its summary (rundir.progress_from_summary
    makes them a Progress); None when it has none or it is damaged (the records then decide, as for a run
    finalized before summaries existed)."""
    path = run_dir / SUMMARY_FILE
    try:
        f = Fields(read_json(path), path)
        if f.get("format", int) != FORMAT:
            return None
        res = f.get("results", dict)
        Fields(res, path, " in 'results'").list_of("iterations", dict)
        ranks = [Fields(r, path, " in 'ranks'") for r in f.list_of("ranks", dict)]
        return res, ranks, f.list_of("problems", str)
    except (FileNotFoundError, RunDirError):
        return None
