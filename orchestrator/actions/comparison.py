"""A sweep's comparison: one row per config (its layout, method, state, timings), as comparison.csv /
comparison.json in the sweep directory and as `refitctl results SWEEP` prints it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from orchestrator.actions.output import emit, wide_console
from orchestrator.state.rundir import sweep_run_dirs, sweep_title
from orchestrator.state.tracking import Snapshot, snapshots
from orchestrator.views.liveview import comparison_view, layout_label, refit_kind
from refit_core.jsonfile import write_file
from refit_core.results import write_json_atomic


_COLUMNS = ("config", "mode", "method", "requested_method", "source", "destination", "refit", "gpus_used", "state",
            "verified", "median_ms", "min_ms", "GBps", "delivered_bytes", "run_dir")


def comparison_rows(snaps: list[Snapshot]) -> list[dict[str, Any]]:
    rows = []
    for s in snaps:
        res = s.results or {}
        rows.append({
            "config": s.info.config, "mode": s.info.mode, "method": s.info.method,
            "requested_method": s.info.requested_method, "source": layout_label(s.info.source),
            "destination": layout_label(s.info.destination), "refit": refit_kind(s.info),
            "gpus_used": s.info.active_ranks, "state": s.state.state, "verified": s.verified,
            "median_ms": res.get("median_ms"), "min_ms": res.get("min_ms"), "GBps": res.get("GBps"),
            "delivered_bytes": s.info.delivered_bytes, "run_dir": str(s.run_dir),
        })
    return rows


def comparison_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in _COLUMNS})
    return buf.getvalue()


def write_comparison(sweep_dir: Path, snaps: list[Snapshot]) -> None:
    rows = comparison_rows(snaps)
    write_file(sweep_dir / "comparison.csv", comparison_csv(rows))
    write_json_atomic(sweep_dir / "comparison.json", rows)


def print_sweep_results(sweep_dir: Path, as_csv: bool, as_json: bool) -> int:
    snaps = snapshots(sweep_run_dirs(sweep_dir))  # reading only: comparison.csv is the sweep's
    rows = comparison_rows(snaps)
    if as_csv:
        emit(comparison_csv(rows))
    elif as_json:
        emit(json.dumps(rows, indent=1) + "\n")
    else:
        wide_console().print(comparison_view(snaps, sweep_title(sweep_dir)))
    return 0 if all(s.verified for s in snaps) else 1
