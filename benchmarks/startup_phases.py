"""Where a run's start-up time goes, phase by phase, from the ranks' records (docs/benchmarks.md, "Start-up").

    python benchmarks/startup_phases.py RUN_DIR [--t0 EPOCH_SECONDS]

Each rank's record carries every phase it entered with its wall time (`phases`, written when the
rank's watchdog arms a phase: refit_core/execution/watchdog.py). This prints, per phase up to the
first timed iteration, its duration (median and slowest over the active ranks), then the time from
`--t0` (when `refitctl submit` was typed; default: the submission time in run.json) to the process
start of the first rank, and to the slowest rank's first timed iteration.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.state.runfiles import read_run_info  # noqa: E402
from refit_core.results import read_rank_records  # noqa: E402

END = "iterations"  # the phase whose start ends the start-up


def durations(phases: list[tuple[str, float]] | list[list[Any]]) -> dict[str, float]:
    """Seconds spent in each phase before the first timed iteration, from one record's `phases`."""
    out: dict[str, float] = {}
    for (name, since), (_, until) in zip(phases, phases[1:]):
        out[name] = out.get(name, 0.0) + (until - since)
        if _ == END:
            break
    return out


def summary(run_dir: Path, t0: float | None = None) -> tuple[list[tuple[str, float, float]], dict[str, float]]:
    """([(phase, median s, max s)] in the order entered, {"launch": s, "first_timed_iteration": s} from t0)."""
    info = read_run_info(run_dir)
    records, _ = read_rank_records(run_dir)
    recs = [r for r in records if r.rank < info.active_ranks and r.phases]
    order: list[str] = []
    per: dict[str, list[float]] = {}
    for r in recs:
        for name, secs in durations(r.phases).items():
            if name not in per:
                order.append(name)
            per.setdefault(name, []).append(secs)
    rows = [(n, statistics.median(per[n]), max(per[n])) for n in order]
    if t0 is None:
        t0 = info.job.submitted if info.job else None
    marks: dict[str, float] = {}
    if t0 is not None and recs:
        marks["first process start"] = min(r.phases[0][1] for r in recs) - t0
        ends = [next((s for n, s in r.phases if n == END), None) for r in recs]
        if all(e is not None for e in ends):
            marks["first timed iteration starts (slowest rank)"] = max(ends) - t0  # type: ignore[type-var]
    return rows, marks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--t0", type=float, default=None, help="epoch seconds when submit was typed (default: run.json's)")
    a = p.parse_args(argv)
    rows, marks = summary(a.run_dir, a.t0)
    print(f"{'phase':<58} {'median s':>9} {'max s':>7}")
    for name, med, mx in rows:
        print(f"{name[:58]:<58} {med:9.2f} {mx:7.2f}")
    for k, v in marks.items():
        print(f"{k}: {v:.2f} s after t0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
