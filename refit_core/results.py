"""A run's results: the rank records (refit_core/records.py) folded into one summary, results.json, and its one
checked reader.

`aggregate()` takes an iteration's time as the slowest rank's; delivered bytes count every destination byte once.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from refit_core.errors import RunDirError
from refit_core.jsonfile import Fields, read_json, write_json_atomic
from refit_core.records import IterationRecord, read_rank_records

__all__ = ["aggregate", "read_results", "write_json_atomic"]


def aggregate(run_dir: Path, expected_ranks: list[int], delivered_bytes: int, precision: str = "bf16",
              wire_bytes: int | None = None) -> dict[str, Any]:
    """Summary of a run from its rank records: per-iteration time (max over ranks), median, GB/s.

    `precision`: the destination's (bf16, fp8); `wire_bytes`: the bytes that cross between GPUs per
    iteration in it (FP8: the quantised weights, one byte each, and their scales)."""
    records, problems = read_rank_records(run_dir)
    by_rank = {r.rank: r for r in records}
    missing = [r for r in expected_ranks if r not in by_rank]
    errors = {str(r.rank): r.error for r in records if r.error}
    n_iter = min((len(by_rank[r].iterations) for r in expected_ranks if r in by_rank), default=0)
    iterations = []
    for k in range(n_iter):
        its = [by_rank[r].iterations[k] for r in expected_ranks]
        t = max(i.time_ms for i in its)
        slowest = max(its, key=lambda i: i.time_ms)
        iterations.append({
            "iteration": its[0].iteration, "warmup": its[0].warmup, "time_ms": t,
            "GBps": delivered_bytes / (t * 1e6) if t > 0 else None,
            "phases_ms": slowest.phases_ms, "launches": max(i.launches for i in its),
        })
    timed = [i["time_ms"] for i in iterations if not i["warmup"]]
    verified = bool(expected_ranks) and not missing and not errors and not problems and \
        all(by_rank[r].verified for r in expected_ranks)
    out: dict[str, Any] = {
        "iterations": iterations,
        "timed_iterations": len(timed),
        "warmup_ms": [i["time_ms"] for i in iterations if i["warmup"]],
        "first_ms": iterations[0]["time_ms"] if iterations else None,  # the first refit (a peer's plan included)
        "median_ms": statistics.median(timed) if timed else None,
        "min_ms": min(timed) if timed else None,
        "delivered_bytes": delivered_bytes,
        "precision": precision,
        "wire_bytes": wire_bytes,
        "verified": verified,
        "complete": verified and all(by_rank[r].complete for r in expected_ranks),
        "missing_ranks": missing,
        "errors": errors,
        "problems": problems,
        "extra_bytes_max": max((r.extra_bytes or 0 for r in records), default=0),
        "extra_bytes_measured_max": max((r.extra_bytes_measured for r in records
                                         if r.extra_bytes_measured is not None), default=None),
        "restarts": max((r.restarts for r in records), default=0),
        "transport": next((r.transport for r in sorted(records, key=lambda r: r.rank) if r.transport), {}),
        # the method the ranks ran: run.json's, or its CPU fallback on SLURM nodes without CUDA (jobs/refit_job.py)
        "method": next((r.method for r in sorted(records, key=lambda r: r.rank) if r.method), None),
    }
    out["GBps"] = delivered_bytes / (out["median_ms"] * 1e6) if out["median_ms"] else None
    return out


# ----------------------------------------------------------------------------- results.json

RESULTS_FIX = "delete it and refitctl aggregates the results again from the rank files (ranks/)"


def read_results(path: Path) -> dict[str, Any]:
    """results.json, checked field by field; damaged or of the wrong shape: a RunDirError naming it."""
    try:
        data = read_json(path, RESULTS_FIX)
    except RunDirError as e:
        if e.problem.startswith("cannot be read"):
            raise
        cause = "UnicodeDecodeError" if "UTF-8" in e.problem else "JSONDecodeError"
        raise RunDirError(path, f"is damaged (truncated or corrupt: {cause})", RESULTS_FIX) from None
    try:
        f = Fields(data, path, fix=RESULTS_FIX)
        for n, it in enumerate(f.list_of("iterations", dict)):
            IterationRecord.from_json(it, path, f" (iteration {n})")
            Fields(it, path).get("GBps", float, type(None), default=None)
        f.get("verified", bool)
        f.get("complete", bool, default=False)
        for key in ("median_ms", "min_ms", "GBps"):
            f.get(key, float, type(None), default=None)
        f.get("delivered_bytes", int, default=0)
        f.get("precision", str, default="bf16")
        f.get("wire_bytes", int, type(None), default=None)
        f.get("timed_iterations", int, default=0)
        f.list_of("warmup_ms", float, default=[])
        f.list_of("missing_ranks", int, default=[])
        f.list_of("problems", str, default=[])
        f.get("errors", dict, default={})
        f.get("restarts", int, default=0)
        f.get("extra_bytes_max", int, default=0)
        f.get("extra_bytes_measured_max", int, type(None), default=None)
        f.get("transport", dict, default={})
        f.get("method", str, type(None), default=None)
    except RunDirError as e:
        raise RunDirError(path, f"is damaged (not a results file: {e.problem.removeprefix('is ')})",
                          RESULTS_FIX) from None
    return data
