"""A run directory: everything about one run, as files anyone (and any later refitctl) can read.

    runs/<name>-<YYYYmmdd-HHMMSS>/
      run.json          what was submitted: spec, job id, executor; the final state once known
      config.json       the resolved RunConfig (what the job reads)
      layout.txt        the seed's "World size / Source ranks / ..." lines
      plan.json         the transfer plan's summary (`refitctl plan --json`)
      ranks/rank-NNNNN.jsonl  each rank's record, a line appended per iteration (refit_core.records)
      results.json      the aggregate: by rank 0 at the end, else by refitctl from the rank files
      iterations.csv    per-iteration timings (slowest rank), rank-iterations.csv per rank
      summary.json      once finished: what status, runs and report read (orchestrator/state/summary.py)
      logs/rank-NNNNN.log     each task's output
      job-state.json    local runs: the controller's RUNNING / COMPLETED / FAILED / TIMEOUT / CANCELLED
      submitit/         submitit's pickles and first log lines

A sweep directory holds `sweep.json` and one run directory per config.

Reading a run never writes to it (`refitctl status`, `results`, `runs`, `report` work on a read-only
copy); what a finished run gets written (`finalize`: results.json when rank 0 wrote none, the CSVs,
the final state in run.json) is done by the local controller and by the refitctl that submitted and
followed the run. The files' readers are in orchestrator/state/runfiles.py, refit_core/records.py and refit_core/results.py.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.state.summary import SUMMARY_FILE, summary_json
from orchestrator.submission.prepared import PreparedRun, run_info
from refit_core.config import RunConfig
from refit_core.paths import CANCEL_FILE, CONFIG_FILE, DEVICES_FILE, LAYOUT_FILE, LOGS_DIR, PLAN_FILE, PLAN_SUMMARY_FILE, RESULTS_FILE
from refit_core.planning.planfile import plan_to_bytes
from refit_core.jsonfile import write_bytes_atomic
from orchestrator.state.runfiles import (RUN_FILE, STATE_FILE, SWEEP_FILE, RunInfo, read_run_info, read_sweep_info,
                                   update_run_file)
from refit_core.errors import ConfigError, RunDirError
from refit_core.jsonfile import Fields, write_file
from refit_core.results import aggregate, read_results, write_json_atomic
from refit_core.records import rank_files, read_rank_file, read_rank_records

__all__ = ["RUN_FILE", "SWEEP_FILE", "STATE_FILE", "CANCEL_FILE", "RunInfo"]


def stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def unique_dir(parent: Path, base: str) -> Path:
    """parent/base, or parent/base.2, .3, ... if taken; created."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", base)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for k in range(1, 1000):
            d = parent / (safe if k == 1 else f"{safe}.{k}")
            try:
                d.mkdir()
                return d
            except FileExistsError:
                continue
    except OSError as e:
        raise RunDirError(parent, f"cannot hold a new run directory ({e.strerror or e})",
                          "point --runs-dir at a writable directory with free space") from None
    raise ConfigError(f"cannot create a run directory under {parent}: too many named {safe}")


def write_run(run_dir: Path, run: PreparedRun, command: str, sweep: Path | None = None) -> dict[str, Any]:
    """Write config, layout, the plan (plan.bin for the ranks, plan.json for people) and run.json (not yet
    submitted, run.json last); returns run.json's content. Any failure (a full disk, Ctrl-C) removes the
    directory: no half-made run is left."""
    cfg = run.spec.config
    try:
        write_json_atomic(run_dir / CONFIG_FILE, cfg.to_json())
        write_file(run_dir / LAYOUT_FILE, run.plan.world.describe() + "\n")
        write_bytes_atomic(run_dir / PLAN_FILE, plan_to_bytes(run.plan))
        if run.spec.devices is not None:
            write_json_atomic(run_dir / DEVICES_FILE, run.spec.devices.to_json())
        write_json_atomic(run_dir / PLAN_SUMMARY_FILE, run.summary())
        (run_dir / LOGS_DIR).mkdir(exist_ok=True)
        info = run_info(run.spec, run.plan, command, str(run_dir.resolve()))
        if sweep is not None:
            info["sweep"] = str(sweep.resolve())
        write_json_atomic(run_dir / RUN_FILE, info)
        return info
    except BaseException as e:
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise RunDirError(run_dir, f"cannot be written ({e.strerror or e})",
                              "free some space or point --runs-dir at a writable disk; nothing was submitted") from None
        raise


def update_run(run_dir: Path, **fields: Any) -> RunInfo:
    """Set fields of run.json (under the run's lock: read, change, write); returns what was written."""
    return update_run_file(run_dir, lambda data: data.update(fields))


def load_config(run_dir: Path) -> RunConfig:
    return RunConfig.read(run_dir / CONFIG_FILE)


def is_run(d: Path) -> bool:
    return (d / RUN_FILE).is_file()


def is_sweep(d: Path) -> bool:
    return (d / SWEEP_FILE).is_file()


def list_runs(root: Path) -> list[Path]:
    """Run and sweep directories directly under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and (is_run(d) or is_sweep(d))]
    return sorted(found, key=lambda d: (_created(d), d.name))


def _created(d: Path) -> str:
    """When it was made ("" for a damaged one, listed first: it never hides the others)."""
    try:
        return read_run_info(d).created if is_run(d) else read_sweep_info(d).created
    except RunDirError:
        return ""


def find_run(root: Path, text: str | None) -> Path:
    """A run or sweep directory from a path, a directory name under `root`, or a name prefix (newest)."""
    runs = list_runs(root)
    if not text:
        if not runs:
            raise ConfigError(f"no runs under {root}: submit one with `refitctl submit config-1`")
        return runs[-1]
    p = Path(text)
    for cand in (root / text, p):  # a name under --runs-dir first: a same-named folder here must not shadow it
        if cand.is_dir() and (is_run(cand) or is_sweep(cand)):
            return cand
    matches = [d for d in runs if d.name.startswith(text)]
    if not matches:
        raise ConfigError(f"no run {text!r} under {root}: `refitctl runs` lists them")
    return matches[-1]


# ----------------------------------------------------------------------------- progress

def sweep_run_dirs(sweep_dir: Path) -> list[Path]:
    """The latest run directory of each config, in the sweep's order."""
    data = read_sweep_info(sweep_dir)
    dirs = [sweep_dir / data.runs[n][-1] for n in data.configs if data.runs.get(n)]
    return [d for d in dirs if (d / "run.json").is_file()]  # a run whose submission failed is not there


def sweep_title(sweep_dir: Path) -> str:
    return f"sweep {read_sweep_info(sweep_dir).name} ({sweep_dir})"


@dataclass(frozen=True)
class RankProgress:
    rank: int
    role: str
    done: int  # iterations recorded, warm-up included
    times_ms: tuple[float, ...]
    verified: bool
    complete: bool
    error: str | None
    mtime: float
    phase: str | None = None  # what the rank is doing now (its watchdog's phase: refit_core/records.py "Phases")
    phase_since: float | None = None  # since when, wall clock

    @property
    def last_ms(self) -> float | None:
        return self.times_ms[-1] if self.times_ms else None


@dataclass(frozen=True)
class Progress:
    """What the rank files say right now."""

    ranks: tuple[RankProgress, ...]
    active: int  # ranks 0..active-1 take part
    warmup: int
    iterations: int
    problems: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.warmup + self.iterations

    @property
    def started(self) -> bool:
        """A rank has recorded an iteration or an error (each rank writes an empty record when it starts)."""
        return any(r.done or r.error for r in self.ranks)

    @property
    def done(self) -> int:
        """Iterations every active rank has finished (0 until all have reported)."""
        act = [r for r in self.ranks if r.rank < self.active]
        return min((r.done for r in act), default=0) if len(act) == self.active else 0

    @property
    def last_ms(self) -> float | None:
        """The latest iteration every active rank finished: its time (slowest rank), None before the first."""
        k = self.done
        if k == 0:
            return None
        # a rank's times_ms are its last len(times_ms) iterations (all of them, read from the records; the
        # last one, from a finished run's summary)
        times = [r.times_ms[k - 1 - (r.done - len(r.times_ms))] for r in self.ranks
                 if r.rank < self.active and 0 <= k - 1 - (r.done - len(r.times_ms)) < len(r.times_ms)]
        return max(times, default=None)

    @property
    def errors(self) -> list[RankProgress]:
        """Ranks that reported an error, the first to fail (oldest record) first."""
        return sorted((r for r in self.ranks if r.error), key=lambda r: (r.mtime, r.rank))

    def count(self, done: int) -> str:
        """Iterations finished, as the header and every rank row say it: 'warm-up k/W' while warming
        up, then timed iterations only ('k/N'), so the two never count different things."""
        if done < self.warmup:
            return f"warm-up {done}/{self.warmup}"
        return f"{done - self.warmup}/{self.iterations}"

    def phase(self) -> str:
        """'starting', 'warm-up k/W' or 'iteration k/N' (timed iterations every active rank finished)."""
        if not self.started:
            return "starting"
        text = self.count(self.done)
        return text if text.startswith("warm-up") else f"iteration {text}"


def progress_from_summary(ranks: list[Fields], problems: list[str], active: int, warmup: int,
                          iterations: int) -> Progress:
    """A finished run's progress from its summary's ranks (orchestrator/state/summary.py): each rank's last
    time only, so reading it costs the same at any number of iterations. A damaged field: RunDirError."""
    out = []
    for f in ranks:
        last = f.get("last_ms", float, type(None))
        out.append(RankProgress(f.get("rank", int), f.get("role", str), f.get("done", int),
                                () if last is None else (float(last),), f.get("verified", bool),
                                f.get("complete", bool), f.get("error", str, type(None)), f.get("mtime", float),
                                f.get("phase", str, type(None)), f.get("phase_since", float, type(None))))
    return Progress(tuple(sorted(out, key=lambda x: x.rank)), active, warmup, iterations, tuple(problems))


def progress(run_dir: Path, active: int, warmup: int, iterations: int) -> Progress:
    """What the rank files say now (ranks 0..active-1 take part; run.json's counts): read incrementally
    (refit_core.records.RankFileReader), nothing written."""
    ranks, problems = [], []
    for path in rank_files(run_dir):
        rec, problem = read_rank_file(path)
        if rec is None:
            problems.append(f"{path.name}: {problem}")
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = 0.0
        ranks.append(RankProgress(rec.rank, rec.role, len(rec.iterations), tuple(i.time_ms for i in rec.iterations),
                                  rec.verified, rec.complete, rec.error, mtime, rec.phase, rec.phase_since))
    return Progress(tuple(sorted(ranks, key=lambda x: x.rank)), active, warmup, iterations, tuple(problems))


# ----------------------------------------------------------------------------- results

def results(run_dir: Path, info: RunInfo) -> dict[str, Any]:
    """results.json if rank 0 wrote it, else the aggregate of the rank files (nothing is lost)."""
    path = run_dir / RESULTS_FILE
    if path.is_file():
        return read_results_file(path)
    out = aggregate(run_dir, list(range(info.active_ranks)), info.delivered_bytes, info.precision, info.wire_bytes)
    out["aggregated_by"] = "refitctl (from the rank files; rank 0 wrote no results.json)"
    return out


def read_results_file(path: Path) -> dict[str, Any]:
    """results.json, checked (refit_core.results.read_results): damaged is a RunDirError that says how to recover."""
    return read_results(path)


def finalize(run_dir: Path, info: RunInfo, final: dict[str, Any]) -> dict[str, Any]:
    """Once the job is over: results.json (aggregated if rank 0 wrote none), CSVs, final state in run.json.

    Only the controller and the submitting refitctl call it (a reading command never writes)."""
    res = results(run_dir, info)
    if not (run_dir / RESULTS_FILE).is_file():
        write_json_atomic(run_dir / RESULTS_FILE, res)
    write_file(run_dir / "iterations.csv", iterations_csv(res, info))
    write_file(run_dir / "rank-iterations.csv", rank_iterations_csv(run_dir, res))
    write_json_atomic(run_dir / SUMMARY_FILE, summary_json(res, progress(run_dir, info.active_ranks, info.warmup,
                                                                          info.iterations)))
    update_run(run_dir, final=final)
    return res


def iterations_csv(res: dict[str, Any], info: RunInfo) -> str:
    its = res.get("iterations", [])
    phases = sorted({k for i in its for k in (i.get("phases_ms") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "config", "method", "iteration", "warmup", "time_ms", "GBps", "launches",
                *(f"{p}_ms" for p in phases)])
    for i in its:
        w.writerow([info.name, info.config, info.method, i["iteration"], int(bool(i["warmup"])),
                    f"{i['time_ms']:.3f}", "" if i.get("GBps") is None else f"{i['GBps']:.4f}",
                    i.get("launches", 0), *(_fmt((i.get("phases_ms") or {}).get(p)) for p in phases)])
    return buf.getvalue()


def rank_iterations_csv(run_dir: Path, res: dict[str, Any] | None = None) -> str:
    """Every rank's row of every iteration the run counts: with `res` (the run's results), only the
    iterations in it, as iterations.csv has them. An iteration that failed on one rank (a verification
    error, a crash) is dropped from both, never kept in one (issue 25, item 13)."""
    records, _ = read_rank_records(run_dir)
    counted = None if res is None else {(bool(i["warmup"]), i["iteration"]) for i in res.get("iterations", [])}
    rows = [(r.rank, r.role, i) for r in records for i in r.iterations
            if counted is None or (i.warmup, i.iteration) in counted]
    phases = sorted({k for _, _, i in rows for k in i.phases_ms})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "role", "iteration", "warmup", "time_ms", "bytes_in", "bytes_out", "bytes_local",
                "launches", *(f"{p}_ms" for p in phases)])
    for rank, role, i in sorted(rows, key=lambda x: (x[0], x[2].iteration)):
        w.writerow([rank, role, i.iteration, int(i.warmup), f"{i.time_ms:.3f}", i.bytes_in, i.bytes_out,
                    i.bytes_local, i.launches, *(_fmt(i.phases_ms.get(p)) for p in phases)])
    return buf.getvalue()


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"
