"""Inject each test fault and measure how long until every rank has exited, and who is named.

    python benchmarks/fault_times.py                      # ranks' own mechanisms (jobs/local.py, no kill)
    python benchmarks/fault_times.py --via local          # through refitctl submit --cluster local
    python benchmarks/fault_times.py --via slurm          # through refitctl submit --cluster slurm

Faults (REFITCTL_FAULT, refit_core/execution/engine.py): raise, kill (SIGKILL), hang, corrupt, each at the
first timed iteration, on the last destination rank of a non-collocated config (config-4: 3 ranks,
rank 2) and of a collocated one (collocated-4: 4 ranks, rank 1); gloo on the CPU, the tests' small
model, --refit-timeout 10 (override with --timeout).

`--via direct` (the default) launches the ranks as plain processes and lets them exit on their own:
no controller, no srun stops anyone, so the times are those of the process-group timeout and the
watchdog. The other two measure what a user sees: the local controller and srun stop the remaining
ranks soon after the first one fails. "exit after fault" is from the fault's wall-clock time (logged
by the faulty rank) to the last rank's exit (direct: each process's exit; local: the controller's
final state; SLURM: the last write to srun's messages or a rank's log, as sacct's End has whole seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import SMALL_FLAGS  # noqa: E402
from jobs.local import launch  # noqa: E402
from orchestrator.configs import resolve  # noqa: E402
from orchestrator.state.failures import ProcessEnd, diagnose  # noqa: E402
from orchestrator.configs.flags import apply_overrides  # noqa: E402
from orchestrator.state.rundir import progress  # noqa: E402

FAULTS = ("raise", "kill", "hang", "corrupt")
CONFIGS = {"config-4": 3, "collocated-4": 4}  # config -> world size (all ranks active)
_FAULT_LINE = re.compile(r"test fault \w+ injected \(wall clock ([0-9.]+)\)")


def fault_time(run_dir: Path, rank: int) -> float | None:
    for name in (f"rank-{rank:05d}.log", f"rank-{rank}.log"):
        try:
            m = _FAULT_LINE.search((run_dir / "logs" / name).read_text(errors="replace"))
        except OSError:
            continue
        if m:
            return float(m.group(1))
    return None


def fault_rank(config: str) -> int:
    """The last destination rank: every fault, corrupt included, applies there."""
    return resolve(config).world().destination.ranks[-1]


def direct(config: str, fault: str, timeout: float, tmp: Path) -> dict:
    world = CONFIGS[config]
    cfg = apply_overrides(resolve(config), {**SMALL_FLAGS, "refit_method": "gloo", "refit_timeout": timeout,
                                            "num_benchmark_iterations": 2})
    cfg = cfg.with_changes(gpus=world)
    run_dir = tmp / f"{config}-{fault}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json()))
    ends: list[float] = []
    rank = fault_rank(config)
    codes = launch(run_dir, world, timeout_s=600, grace_s=600, exit_times=ends,
                   extra_env={"REFITCTL_FAULT": f"{fault}:rank={rank}:iteration=1"})
    t0 = fault_time(run_dir, rank)
    proc_ends = {r: ProcessEnd(signal=-c) if c < 0 else ProcessEnd(code=c) for r, c in enumerate(codes) if c}
    order = sorted(proc_ends, key=lambda r: ends[r])
    d = diagnose(progress(run_dir, world, cfg.run.warmup, cfg.run.iterations), proc_ends, order, "FAILED")
    return {"config": config, "fault": fault, "rank": rank, "exit_codes": codes,
            "exits_after_fault_s": [round(t - t0, 1) for t in ends] if t0 else None,
            "all_exited_after_s": round(max(ends) - t0, 1) if t0 else None,
            "named": f"rank {d.first.rank}: {d.first.reason}" if d.first else None}


def through_refitctl(config: str, fault: str, timeout: float, tmp: Path, cluster: str) -> dict:
    world = CONFIGS[config]
    rank = fault_rank(config)
    small = [a for k, v in SMALL_FLAGS.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    where = ["--cluster", "local"] if cluster == "local" else \
        ["--cluster", "slurm", "--partition", "debug", "--gpus-per-node", "4", "--time", "10"]
    runs = tmp / f"{cluster}-{config}-{fault}"
    cmd = [sys.executable, "-m", "orchestrator.cli", "submit", config, "--gpus", str(world), "--refit-method", "gloo",
           "--refit-timeout", str(timeout), "--num-benchmark-iterations", "2", "--poll", "0.5", *where, *small,
           "--env", f"REFITCTL_FAULT={fault}:rank={rank}:iteration=1"]
    env = {**os.environ, "REFITCTL_RUNS_DIR": str(runs)}
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    run_dir = next(d for d in runs.iterdir() if (d / "run.json").exists())
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "results", str(run_dir), "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    res = json.loads(out.stdout)
    t0 = fault_time(run_dir, rank)
    job = json.loads((run_dir / "run.json").read_text())["job"]
    if cluster == "local":
        end = json.loads((run_dir / "job-state.json").read_text())["ended"]
    else:  # sacct's End has whole seconds: take the last write of srun's messages and the ranks' logs instead
        logs = [*(run_dir / "logs").iterdir(), *Path(job["folder"]).glob(f"{job['job_id']}_*_log.out")]
        end = max(p.stat().st_mtime for p in logs)
    first = res.get("first_failure") or {}
    return {"config": config, "fault": fault, "rank": rank, "state": res["state"], "detail": res["detail"],
            "all_exited_after_s": round(end - t0, 1) if t0 else None,
            "named": f"rank {first.get('rank')}: {first.get('reason')}" if first else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--via", choices=("direct", "local", "slurm"), default="direct")
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--timeout", type=float, default=10.0, help="--refit-timeout for every run (default 10)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            for fault in args.faults.split(","):
                t = time.monotonic()
                if args.via == "direct":
                    row = direct(config, fault, args.timeout, Path(tmp))
                else:
                    row = through_refitctl(config, fault, args.timeout, Path(tmp), args.via)
                row["wall_s"] = round(time.monotonic() - t, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
