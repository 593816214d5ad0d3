"""Launch a refit job as N local processes (no scheduler): the tests' and a laptop's launcher.

Each process gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and runs
`python -m jobs.refit_job RUN_DIR`; its output goes to RUN_DIR/logs/rank-NNNNN.log. If any process
fails, the others are given `grace_s` to exit on their own, then killed: nothing hangs. Each rank
leads its own process group, and the whole group is killed, so nothing a rank started is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from refit_core.taskenv import free_port, rank_log_name

if TYPE_CHECKING:
    from refit_core.config import RunConfig


def launch(run_dir: Path, world_size: int, timeout_s: float = 600, grace_s: float = 90,
           extra_env: dict[str, str] | None = None, module: str = "jobs.refit_job",
           exit_times: list[float] | None = None) -> list[int]:
    """Run all ranks; return their exit codes (negative: killed by that signal).

    `exit_times`, if given, is filled with each rank's exit as wall-clock time (seen within 50 ms)."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    procs = []
    for r in range(world_size):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                   **(extra_env or {}))
        log = open(logs / rank_log_name(r), "w")
        procs.append((subprocess.Popen([sys.executable, "-m", module, str(run_dir)], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                       start_new_session=True), log))
    deadline = time.monotonic() + timeout_s
    first_failure: float | None = None
    ended: list[float | None] = [None] * world_size
    while True:
        codes = [p.poll() for p, _ in procs]
        for r, c in enumerate(codes):
            if c is not None and ended[r] is None:
                ended[r] = time.time()
        if all(c is not None for c in codes):
            break
        if first_failure is None and any(c not in (None, 0) for c in codes):
            first_failure = time.monotonic()
        now = time.monotonic()
        if now > deadline or (first_failure is not None and now - first_failure > grace_s):
            for p, _ in procs:
                if p.poll() is None:
                    _kill_group(p.pid)
        time.sleep(0.05)
    for p, log in procs:
        _kill_group(p.pid)  # whatever a rank started and left behind
        log.close()
    if exit_times is not None:
        exit_times[:] = [t if t is not None else time.time() for t in ended]
    return [p.returncode for p, _ in procs]


def _kill_group(pid: int) -> None:
    """SIGKILL the process group a rank leads (each rank starts its own session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def run_locally(cfg: "RunConfig", run_dir: Path, timeout_s: float = 600, grace_s: float = 90,
                extra_env: dict[str, str] | None = None) -> tuple[list[int], dict | None]:
    """Write the run directory for `cfg`, run all its ranks here; (exit codes, results.json or None)."""
    import json

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=1))
    codes = launch(run_dir, cfg.gpus, timeout_s=timeout_s, grace_s=grace_s, extra_env=extra_env)
    res = run_dir / "results.json"
    return codes, (json.loads(res.read_text()) if res.exists() else None)
