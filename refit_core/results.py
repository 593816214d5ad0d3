"""Run results as plain JSON: per-rank records written by each rank, and their aggregate.

Each rank rewrites `ranks/rank-NNNNN.json` atomically (write, then rename) after every iteration,
so a job killed after k iterations still has k. `aggregate()` folds them into one summary: an
iteration's time is the slowest rank's; delivered bytes count every destination byte once.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except BaseException:  # e.g. SIGTERM mid-write: the old file stays whole, no half-written temporary is left
        tmp.unlink(missing_ok=True)
        raise


def rank_path(run_dir: Path, rank: int) -> Path:
    return run_dir / "ranks" / f"rank-{rank:05d}.json"


def read_rank_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All readable rank records, and a note per unreadable (corrupt, truncated) file."""
    records, problems = [], []
    for p in sorted((run_dir / "ranks").glob("rank-*.json")):
        try:
            rec = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
            problems.append(f"{p.name}: unreadable ({e.__class__.__name__}: truncated or corrupt)")
            continue
        if not is_rank_record(rec):
            problems.append(f"{p.name}: not a rank record (fields missing or of the wrong type)")
            continue
        records.append(rec)
    return records, problems


def is_rank_record(rec: Any) -> bool:
    """The shape every reader relies on: rank, iterations with their times, the flags and the error."""
    if not isinstance(rec, dict) or not isinstance(rec.get("rank"), int) or isinstance(rec.get("rank"), bool):
        return False
    its = rec.get("iterations", [])
    if not isinstance(its, list) or not isinstance(rec.get("error"), (str, type(None))) \
            or not isinstance(rec.get("restarts", 0), int):
        return False
    return all(isinstance(i, dict) and isinstance(i.get("time_ms"), (int, float)) and isinstance(i.get("iteration"), int)
               and isinstance(i.get("warmup"), bool) for i in its)


def aggregate(run_dir: Path, expected_ranks: list[int], delivered_bytes: int) -> dict[str, Any]:
    """Summary of a run from its rank records: per-iteration time (max over ranks), median, GB/s."""
    records, problems = read_rank_records(run_dir)
    by_rank = {r["rank"]: r for r in records}
    missing = [r for r in expected_ranks if r not in by_rank]
    errors = {str(r["rank"]): r["error"] for r in records if r.get("error")}
    n_iter = min((len(by_rank[r]["iterations"]) for r in expected_ranks if r in by_rank), default=0)
    iterations = []
    for k in range(n_iter):
        its = [by_rank[r]["iterations"][k] for r in expected_ranks]
        t = max(i["time_ms"] for i in its)
        slowest = max(its, key=lambda i: i["time_ms"])
        iterations.append({
            "iteration": its[0]["iteration"], "warmup": its[0]["warmup"], "time_ms": t,
            "GBps": delivered_bytes / (t * 1e6) if t > 0 else None,
            "phases_ms": slowest.get("phases_ms", {}), "launches": max(i.get("launches", 0) for i in its),
        })
    timed = [i["time_ms"] for i in iterations if not i["warmup"]]
    verified = bool(expected_ranks) and not missing and not errors and not problems and \
        all(by_rank[r].get("verified") for r in expected_ranks)
    out: dict[str, Any] = {
        "iterations": iterations,
        "timed_iterations": len(timed),
        "warmup_ms": [i["time_ms"] for i in iterations if i["warmup"]],
        "first_ms": iterations[0]["time_ms"] if iterations else None,  # the first refit (a peer's plan included)
        "median_ms": statistics.median(timed) if timed else None,
        "min_ms": min(timed) if timed else None,
        "delivered_bytes": delivered_bytes,
        "verified": verified,
        "complete": verified and all(by_rank[r].get("complete") for r in expected_ranks),
        "missing_ranks": missing,
        "errors": errors,
        "problems": problems,
        "extra_bytes_max": max((r.get("extra_bytes", 0) for r in records), default=0),
        "extra_bytes_measured_max": max((r["extra_bytes_measured"] for r in records if "extra_bytes_measured" in r),
                                        default=None),
        "restarts": max((r.get("restarts", 0) for r in records), default=0),
        "transport": next((r["transport"] for r in sorted(records, key=lambda r: r["rank"]) if r.get("transport")),
                          {}),
    }
    out["GBps"] = delivered_bytes / (out["median_ms"] * 1e6) if out["median_ms"] else None
    return out
