"""Launch a refit job as N local processes (no scheduler): the tests' and a laptop's launcher.

Each process is given its place in the job (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT: what
refit_core/environment.py's `task_env()` reads) and runs `python -m jobs.refit_job RUN_DIR`; its output goes to
RUN_DIR/logs/rank-NNNNN.log. The ranks are watched by the one rank supervisor (jobs/supervisor.py): a failed
rank's peers get the grace period, then every rank's process group is stopped; nothing hangs or is left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.supervisor import KILL_GRACE_S, RankSupervisor
from refit_core import environment
from refit_core.environment import free_port, rank_log_name
from refit_core.paths import LOGS_DIR, RESULTS_FILE

if TYPE_CHECKING:
    from refit_core.config import RunConfig

ROOT = Path(__file__).resolve().parent.parent


def _start(run_dir: Path, rank: int, world_size: int, port: int, extra_env: dict[str, str] | None,
           module: str) -> "subprocess.Popen[bytes]":
    env = environment.child_environment({
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), environment.get("PYTHONPATH")) if p),
        **(extra_env or {})})
    with open(run_dir / LOGS_DIR / rank_log_name(rank), "w") as log:
        return subprocess.Popen([sys.executable, "-m", module, str(run_dir)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def launch(run_dir: Path, world_size: int, timeout_s: float = 600, grace_s: float = KILL_GRACE_S,
           extra_env: dict[str, str] | None = None, module: str = "jobs.refit_job",
           exit_times: list[float] | None = None) -> list[int]:
    """Run all ranks; return their exit codes (negative: killed by that signal).

    `exit_times`, if given, is filled with each rank's exit as wall-clock time (seen within 50 ms)."""
    (run_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = [_start(run_dir, r, world_size, port, extra_env, module) for r in range(world_size)]
    supervisor = RankSupervisor(procs, timeout_s, grace_s)
    outcome = supervisor.wait()
    supervisor.stop()
    if exit_times is not None:
        exit_times[:] = [t if t is not None else time.time() for t in outcome.ended]
    return [p.returncode for p in procs]


def run_locally(cfg: "RunConfig", run_dir: Path, timeout_s: float = 600, grace_s: float = KILL_GRACE_S,
                extra_env: dict[str, str] | None = None) -> tuple[list[int], dict[str, Any] | None]:
    """Write the run directory for `cfg` (its config and its plan, made once here), run all its ranks here;
    (exit codes, results.json or None)."""
    import json

    from refit_core.jsonfile import write_json_atomic
    from refit_core.paths import CONFIG_FILE

    from jobs.refit_job import prepare

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CONFIG_FILE, cfg.to_json())
    prepare(run_dir)
    codes = launch(run_dir, cfg.hardware.gpus, timeout_s=timeout_s, grace_s=grace_s, extra_env=extra_env)
    res = run_dir / RESULTS_FILE
    return codes, (json.loads(res.read_text()) if res.exists() else None)
